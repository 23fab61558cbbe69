"""Server side of the workers: starts them (under bubblewrap when available), hands out calls.

Each worker is a long-lived process (worker.py) that handles one call at a time. The pool keeps
idle workers in a queue; a call waits for one (the number of waiting calls is bounded by the
server), sends the request frame, and reads the reply frame with a deadline a little longer than
the call's own (the worker itself SIGKILLs the call's child at the call's deadline). A worker that
misses the deadline, dies or sends garbage is killed and replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct

import psutil
import sys
from typing import Any

from executor import protocol, sandbox
from executor.config import Config

log = logging.getLogger("executor")

# Real paths: the sandbox binds directories, and a bind of a symbolic link's path is not the link.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
SANDBOX_UID = 65534  # "nobody"
_GRACE_S = 5.0

# Layer name -> what it means, in the order they are logged.
LAYERS = {
  "bubblewrap": "workers run under bubblewrap (own mount, PID, IPC, UTS namespaces)",
  "network_namespace": "no network: a network namespace with only a down loopback",
  "unprivileged_user": "workers run as an unprivileged uid without capabilities",
  "rlimits": "per-call limits: address space, CPU seconds, file size 0, open files, processes",
  "no_new_privs": "no-new-privileges on every call's process",
  "landlock": "Landlock: reads only below Python's directories, no writes, no TCP, no signals out",
  "seccomp": "seccomp: no sockets, exec, new processes, ptrace, mount, namespaces, kill of others",
  "empty_environment": "the code sees an empty environment",
}


def _worker_env() -> dict[str, str]:
  """The only variables a worker starts with (never the server's own environment)."""
  return {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": REPO_ROOT, "LANG": "C.UTF-8"}


def interpreter() -> str:
  """This Python through its directory's real path: a virtual environment reached through a
  symbolic link (`/link/bin/python`, `/link` -> `/srv/venv`) becomes `/srv/venv/bin/python`,
  which the sandbox binds. The file name stays, so Python still finds the environment's
  `pyvenv.cfg` (next to `bin/`) and its site-packages."""
  exe = os.path.abspath(sys.executable)
  return os.path.join(os.path.realpath(os.path.dirname(exe)), os.path.basename(exe))


def sandbox_binds() -> list[str]:
  """The directories bound read-only into the worker's sandbox, as real paths: the interpreter's
  and its environment's, the standard library, site-packages, this package, shared libraries."""
  paths = set(sandbox.read_paths()) | {
    "/usr",
    sys.prefix,
    sys.base_prefix,
    os.path.dirname(os.path.realpath(sys.executable)),
    os.path.dirname(interpreter()),
  }
  return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})


def worker_command(cfg: Config) -> list[str]:
  """The worker's command line for the configured isolation."""
  cmd = [interpreter(), "-m", "executor.worker", cfg.to_json()]
  bwrap, unshare = shutil.which("bwrap"), shutil.which("unshare")
  if cfg.isolation == "none":
    return cmd
  if cfg.isolation == "unshare" or (cfg.isolation == "auto" and bwrap is None and unshare):
    # Fallback without bubblewrap: util-linux unshare still gives a network namespace.
    user = [] if os.getuid() == 0 else ["--user", "--map-root-user"]
    return [unshare, *user, "--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child", *cmd]
  if bwrap is None:
    return cmd
  setpriv = shutil.which("setpriv")
  as_root = os.getuid() == 0 and setpriv is not None
  args = [
    bwrap,
    "--die-with-parent",
    "--new-session",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--hostname",
    "sandbox",
  ]
  if not as_root:  # unprivileged bubblewrap: a user namespace, no capabilities
    args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
  args.append("--clearenv")
  for key, value in _worker_env().items():
    args += ["--setenv", key, value]
  args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
  for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
    if os.path.islink(top):
      args += ["--symlink", os.readlink(top), top]
  binds = sandbox_binds()
  # Directories bubblewrap must create to mount the binds (e.g. /root/.pyenv): traversable, so that
  # the unprivileged worker can reach the interpreter even where the host's /root is private.
  parents = set()
  for path in binds:
    parent = os.path.dirname(path)
    while parent != "/" and not any(parent == b or parent.startswith(b + "/") for b in binds):
      parents.add(parent)
      parent = os.path.dirname(parent)
  for path in sorted(parents):
    args += ["--perms", "0755", "--dir", path]
  for path in binds:
    args += ["--ro-bind", path, path]
  args += [
    "--perms",
    "0755",
    "--dir",
    "/etc",
    "--ro-bind-try",
    "/etc/ld.so.cache",
    "/etc/ld.so.cache",
    "--chdir",
    REPO_ROOT,
    "--",
  ]
  if as_root:  # bubblewrap as root makes the namespaces; the worker itself runs as nobody
    args += [
      setpriv,
      f"--reuid={SANDBOX_UID}",
      f"--regid={SANDBOX_UID}",
      "--clear-groups",
      "--bounding-set=-all",
      "--inh-caps=-all",
      "--",
    ]
  return args + cmd


def _host_uid(pid: int) -> int:
  """Host uid of the Python worker started as (a descendant of) `pid`; -1 if not found."""
  try:
    root = psutil.Process(pid)
    for proc in [root] + root.children(recursive=True):
      if proc.name().startswith("python") and "executor.worker" in proc.cmdline():
        return proc.uids().real
  except psutil.Error:
    pass
  return -1


class WorkerProcess:
  """One running worker and its pipes."""

  def __init__(self, proc: asyncio.subprocess.Process, mode: str):
    self.proc = proc
    self.mode = mode
    self.layers: dict[str, Any] = {}
    self.host_uid = -1  # the worker's real uid as the host sees it

  async def read_frame(self) -> tuple[dict[str, Any], list[bytes]]:
    out = self.proc.stdout
    (n,) = struct.unpack(">I", await out.readexactly(4))
    if n > protocol.MAX_HEADER:
      raise ValueError("oversized frame from worker")
    header = json.loads(await out.readexactly(n))
    blobs = [await out.readexactly(int(size)) for size in header.get("blobs", [])]
    return header, blobs

  async def call(
    self, header: dict[str, Any], blobs: list[bytes], timeout: float
  ) -> tuple[dict[str, Any], list[bytes]]:
    async def exchange():
      self.proc.stdin.write(protocol.encode(header, blobs))
      await self.proc.stdin.drain()
      return await self.read_frame()

    return await asyncio.wait_for(exchange(), timeout)

  def kill(self) -> None:
    if self.proc.returncode is None:
      try:
        self.proc.kill()
      except ProcessLookupError:
        pass


class Pool:
  """N workers; `run` executes one call on the next idle worker."""

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.idle: asyncio.Queue[WorkerProcess] = asyncio.Queue()
    self.workers: list[WorkerProcess] = []
    self.waiting = 0  # calls waiting for a worker
    self.busy = 0  # calls running
    self.restarts = 0
    self.layers: dict[str, bool] = {}
    self.layer_details: dict[str, Any] = {}
    self._cmd = worker_command(cfg)
    self._mode = (
      "plain"
      if self._cmd[0] == interpreter()
      else "unshare"
      if os.path.basename(self._cmd[0]) == "unshare"
      else "bwrap"
    )
    self._closing = False

  async def _spawn(self) -> WorkerProcess:
    proc = await asyncio.create_subprocess_exec(
      *self._cmd,
      stdin=asyncio.subprocess.PIPE,
      stdout=asyncio.subprocess.PIPE,
      stderr=None,
      env=_worker_env(),
      cwd=REPO_ROOT,
      close_fds=True,
      limit=1 << 20,
    )
    worker = WorkerProcess(proc, self._mode)
    try:
      hello, _ = await asyncio.wait_for(worker.read_frame(), 120)
    except BaseException:
      worker.kill()
      raise
    worker.layers = hello.get("layers", {})
    worker.host_uid = _host_uid(proc.pid)
    self.workers.append(worker)
    return worker

  def _check_layers(self, worker: WorkerProcess) -> None:
    got = worker.layers
    probe = got.get("probe", {})
    own_net = os.stat("/proc/self/ns/net").st_ino
    self.layers = {
      "bubblewrap": worker.mode == "bwrap",
      "network_namespace": got.get("net_ns_inode") != own_net and set(got.get("interfaces", ["?"])) <= {"lo"},
      "unprivileged_user": probe.get("uid", 0) != 0 and worker.host_uid not in (0, -1),
      "rlimits": bool(got.get("rlimits")),
      "no_new_privs": bool(got.get("no_new_privs")),
      "landlock": bool(got.get("landlock")),
      "seccomp": bool(got.get("seccomp")),
      "empty_environment": bool(got.get("empty_env")),
    }
    self.layer_details = {
      "landlock_abi": got.get("landlock_abi"),
      "worker_uid": got.get("uid"),
      "host_uid": worker.host_uid,
      "interfaces": got.get("interfaces"),
    }

  async def start(self) -> None:
    workers = await asyncio.gather(*(self._spawn() for _ in range(self.cfg.workers)))
    self._check_layers(workers[0])
    for worker in workers:
      self.idle.put_nowait(worker)

  async def _replace(self, worker: WorkerProcess) -> None:
    worker.kill()
    try:
      await worker.proc.wait()
    except Exception:  # pylint: disable=broad-except
      pass
    if worker in self.workers:
      self.workers.remove(worker)
    if self._closing:
      return
    self.restarts += 1
    while not self._closing:
      try:
        self.idle.put_nowait(await self._spawn())
        return
      except Exception as e:  # pylint: disable=broad-except
        log.error("could not restart a worker: %s", e)
        await asyncio.sleep(1.0)

  async def run(self, header: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Runs one call; the reply header always has ok/error/ops/stdout."""
    self.waiting += 1
    try:
      worker = await self.idle.get()
    finally:
      self.waiting -= 1
    self.busy += 1
    try:
      reply, pngs = await worker.call(header, blobs, float(header["timeout_s"]) + _GRACE_S)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError, OSError) as e:
      log.error("worker failed (%s); replacing it", type(e).__name__)
      asyncio.get_running_loop().create_task(self._replace(worker))
      return {
        "ok": False,
        "stdout": "",
        "ops": [],
        "error": {
          "type": "ExecutorError",
          "message": "the executor lost the worker running this code; try again",
          "line": None,
        },
      }, []
    except asyncio.CancelledError:
      # The client went away mid-call: the worker's reply would arrive out of step, so replace it.
      asyncio.get_running_loop().create_task(self._replace(worker))
      raise
    finally:
      self.busy -= 1
    self.idle.put_nowait(worker)
    return reply, pngs

  async def close(self) -> None:
    self._closing = True
    for worker in list(self.workers):
      if worker.proc.stdin is not None:
        worker.proc.stdin.close()
      worker.kill()
    for worker in list(self.workers):
      try:
        await asyncio.wait_for(worker.proc.wait(), 5)
      except (asyncio.TimeoutError, ProcessLookupError):
        pass
