"""The local executor service dies with the process that started it (executor/local.py): a
launcher-like process starts `local_service`, then is killed with SIGKILL or SIGTERM (neither runs
its `finally`); the service stops answering /healthz and it and its sandbox workers are gone
within seconds. Started from a thread that then exits, the service keeps running until its
process dies."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import psutil
import pytest

from executor.local import REPO_ROOT

LAUNCHER = textwrap.dedent("""
    import sys, threading, time
    from executor.local import local_service
    in_thread = sys.argv[1] == "thread"
    ready = threading.Event()
    def start():
      global manager, service
      manager = local_service(workers=1)
      service = manager.__enter__()
      ready.set()
    if in_thread:
      t = threading.Thread(target=start)
      t.start()
      t.join()  # The thread that started the service has exited.
    else:
      start()
    print(service.url, service.proc.pid, flush=True)
    time.sleep(600)
""")


def healthy(url: str) -> bool:
  try:
    with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
      return r.status == 200
  except (urllib.error.URLError, ConnectionError, OSError):
    return False


def alive(pid: int) -> bool:
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def wait_until(condition, limit_s: float = 20.0) -> bool:
  deadline = time.monotonic() + limit_s
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.2)
  return condition()


@pytest.mark.parametrize("how,sig", [("main", signal.SIGKILL), ("main", signal.SIGTERM), ("thread", signal.SIGKILL)])
def test_the_service_and_its_workers_die_with_their_launcher(how, sig):
  launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, how], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    url, pid = launcher.stdout.readline().split()
    service = psutil.Process(int(pid))
    # The workers (bubblewrap and the Python worker inside it) are up once /healthz answers.
    tree = [service.pid] + [p.pid for p in service.children(recursive=True)]
    assert len(tree) >= 2, tree  # The service and at least its worker.
    assert healthy(url)
    assert service.ppid() == launcher.pid
    if how == "thread":  # The exited starter thread did not take the service with it.
      assert healthy(url) and alive(service.pid)
    os.kill(launcher.pid, sig)
    assert launcher.wait(timeout=30) == -sig
    assert wait_until(lambda: not healthy(url)), f"{url} still answers after the launcher died"
    assert wait_until(lambda: not any(alive(p) for p in tree)), [psutil.Process(p).cmdline() for p in tree if alive(p)]
  finally:
    if launcher.poll() is None:
      launcher.kill()
      launcher.wait()
