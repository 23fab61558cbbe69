"""python -m executor --host 127.0.0.1 --port 8700 --workers N [--strict]

The sandboxed code-execution service (docs/executor.md): POST /v1/execute runs a call's Python on
its images, PUT /v1/images stores an image for 'sha256:' references, GET /healthz and
GET /metrics (Prometheus) report on it. Every error answer is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys

from aiohttp import web

from executor.config import Config
from executor.server import Service, describe_layers

log = logging.getLogger("executor")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
  """The description as written; every option with its default."""


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
  defaults = Config()
  p = argparse.ArgumentParser(prog="python -m executor", description=__doc__, formatter_class=_HelpFormatter)
  p.add_argument("--host", default="127.0.0.1", help="address to listen on")
  p.add_argument("--port", type=int, default=8700, help="port to listen on")
  p.add_argument(
    "--workers",
    type=int,
    default=os.cpu_count() or 1,
    help="worker processes, each running one call at a time (this machine's CPU count)",
  )
  p.add_argument(
    "--parent-pid",
    type=int,
    default=0,
    help="stop when this process is no longer the parent (it died; executor.local passes its own pid)",
  )
  p.add_argument(
    "--parent-fd",
    type=int,
    default=-1,
    help="stop when this inherited file descriptor (the read end of the parent's pipe) reaches end-of-file",
  )
  p.add_argument(
    "--parent-death-signal",
    action="store_true",
    help="with --parent-pid: ask the kernel for SIGTERM when the parent (the thread "
    "that started this process) exits (prctl PR_SET_PDEATHSIG)",
  )
  p.add_argument("--strict", action="store_true", help="refuse to start unless every isolation layer is active")
  for field in dataclasses.fields(Config):
    if field.name == "workers":
      continue
    p.add_argument(
      "--" + field.name.replace("_", "-"),
      type=type(getattr(defaults, field.name)),
      default=getattr(defaults, field.name),
      help=field.metadata["help"],
      choices=field.metadata.get("choices"),
    )
  args = p.parse_args(argv)
  cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
  if cfg.workers < 1:
    p.error("--workers must be at least 1")
  return args, cfg


def set_parent_death_signal(parent_pid: int) -> None:
  """SIGTERM to this process when its parent exits; exits at once if it already has."""
  import ctypes  # pylint: disable=import-outside-toplevel

  libc = ctypes.CDLL(None, use_errno=True)
  PR_SET_PDEATHSIG = 1  # pylint: disable=invalid-name
  if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
    log.warning(
      "prctl(PR_SET_PDEATHSIG) failed (errno %d); the parent pid and pipe are still watched", ctypes.get_errno()
    )
  if os.getppid() != parent_pid:  # The parent died before the prctl.
    log.error("the parent process %d is gone; not starting", parent_pid)
    sys.exit(1)


async def watch_parent(parent_pid: int, parent_fd: int, stop: asyncio.Event) -> None:
  """Sets `stop` when the parent pipe reaches end-of-file or the parent pid changes."""
  loop = asyncio.get_running_loop()

  def parent_gone(why: str) -> None:
    if not stop.is_set():
      log.warning("%s: the process that started this service is gone; shutting down", why)
      stop.set()

  if parent_fd >= 0:

    def readable() -> None:
      try:
        data = os.read(parent_fd, 4096)
      except OSError:
        data = b""
      if not data:
        loop.remove_reader(parent_fd)
        parent_gone(f"end of the parent's pipe (fd {parent_fd})")

    loop.add_reader(parent_fd, readable)
  while parent_pid and not stop.is_set():
    if os.getppid() != parent_pid:
      parent_gone(f"parent pid {parent_pid} is now {os.getppid()}")
    await asyncio.sleep(0.5)


async def serve(args: argparse.Namespace, cfg: Config) -> int:
  stop = asyncio.Event()
  watcher = asyncio.create_task(watch_parent(args.parent_pid, args.parent_fd, stop))
  service = Service(cfg)
  app = service.app()
  runner = web.AppRunner(app, access_log=None, handle_signals=False)
  await runner.setup()  # starts the workers and measures the isolation layers
  layers = service.pool.layers
  log.info("isolation layers (%s):\n%s", service.pool.layer_details, "\n".join(describe_layers(layers)))
  missing = [name for name, on in layers.items() if not on]
  if missing and args.strict:
    log.error("--strict: refusing to start, inactive isolation layers: %s", ", ".join(missing))
    await runner.cleanup()
    watcher.cancel()
    return 2
  if missing:
    log.warning("running WITHOUT these isolation layers: %s", ", ".join(missing))
  site = web.TCPSite(runner, args.host, args.port, backlog=1024)
  await site.start()
  log.info("executor listening on http://%s:%d with %d workers", args.host, args.port, cfg.workers)
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGINT, signal.SIGTERM):
    loop.add_signal_handler(sig, stop.set)
  await stop.wait()
  log.info("shutting down")
  await runner.cleanup()
  watcher.cancel()
  return 0


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
  args, cfg = parse_args(argv)
  if args.parent_death_signal and args.parent_pid:
    set_parent_death_signal(args.parent_pid)
  return asyncio.run(serve(args, cfg))


if __name__ == "__main__":
  sys.exit(main())
