"""A local executor service in a subprocess, for the duration of a `with` block.

    with local_service(workers=2) as service:
      async with ExecutorClient(service.url) as client: ...

What `launch.rl`, `launch.rollout`, `launch.demo` and `evals.orientation` start when no service
URLs are configured (through `codevision_jax.rl.rollouts.executor_services`), and what the tests
and benchmarks run against. A fleet of services for real runs is started with
`python -m executor` on the executor hosts (docs/executor.md).

The service dies with the process that started it, however that one ends (the `with` block, an
exception, SIGTERM, `kill -9`): it is told this process's pid and given the read end of a pipe
whose write end only this process holds, and stops when the pipe reaches end-of-file or its parent
pid changes (checked twice a second); started from the main thread, it also asks the kernel for
SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`, which follows the *thread* that forked,
hence the main thread only). Its sandbox workers die with it (bubblewrap's --die-with-parent, and
their pipes close). It runs in its own session, so a Ctrl-C or a scheduler's signal to the
launcher's process group reaches the launcher, which then stops it, not the service mid-round.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class LocalService:
  """A started service: its URL, process and log file."""

  def __init__(self, proc: subprocess.Popen, url: str, log_path: str):
    self.proc = proc
    self.url = url
    self.log_path = log_path

  def log(self) -> str:
    with open(self.log_path, encoding="utf-8", errors="replace") as f:
      return f.read()

  def get_json(self, path: str) -> dict:
    with urllib.request.urlopen(self.url + path, timeout=10) as r:
      return json.load(r)

  def get_text(self, path: str) -> str:
    with urllib.request.urlopen(self.url + path, timeout=10) as r:
      return r.read().decode()


@contextlib.contextmanager
def local_service(
  *args: str,
  workers: int = 2,
  env: dict[str, str] | None = None,
  startup_timeout_s: float = 120.0,
  python: str | None = None,
) -> Iterator[LocalService]:
  """`python -m executor --port <free> --workers N *args`, until /healthz answers; killed after.
  `python`: the interpreter to run it with (default: this one)."""
  port = free_port()
  log = tempfile.NamedTemporaryFile(prefix="executor-", suffix=".log", delete=False)
  # The parent's lifeline: the service holds the read end, only this process the write end
  # (os.pipe's descriptors are not inherited by other programs this process starts).
  lifeline_r, lifeline_w = os.pipe()
  watch = ["--parent-pid", str(os.getpid()), "--parent-fd", str(lifeline_r)]
  if threading.current_thread() is threading.main_thread():
    watch.append("--parent-death-signal")
  cmd = [
    python or sys.executable,
    "-m",
    "executor",
    "--host",
    "127.0.0.1",
    "--port",
    str(port),
    "--workers",
    str(workers),
    *watch,
    *args,
  ]
  try:
    proc = subprocess.Popen(
      cmd,
      cwd=REPO_ROOT,
      stdout=log,
      stderr=subprocess.STDOUT,
      env=dict(os.environ, **(env or {})),
      pass_fds=(lifeline_r,),
      start_new_session=True,
    )
  finally:
    os.close(lifeline_r)
  service = LocalService(proc, f"http://127.0.0.1:{port}", log.name)
  try:
    deadline = time.monotonic() + startup_timeout_s
    while True:
      if proc.poll() is not None:
        raise RuntimeError(f"executor exited with {proc.returncode}:\n{service.log()}")
      try:
        if service.get_json("/healthz")["ok"]:
          break
      except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        pass
      if time.monotonic() > deadline:
        raise RuntimeError(f"executor did not start within {startup_timeout_s} s:\n{service.log()}")
      time.sleep(0.1)
    yield service
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    os.close(lifeline_w)
    log.close()
    os.unlink(log.name)
