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
  p = argparse.ArgumentParser(prog="python -m executor", description=__doc__,
                              formatter_class=_HelpFormatter)
  p.add_argument("--host", default="127.0.0.1", help="address to listen on")
  p.add_argument("--port", type=int, default=8700, help="port to listen on")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="worker processes, each running one call at a time (this machine's CPU "
                 "count)")
  p.add_argument("--strict", action="store_true",
                 help="refuse to start unless every isolation layer is active")
  for field in dataclasses.fields(Config):
    if field.name == "workers":
      continue
    p.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(defaults, field.name)),
                   default=getattr(defaults, field.name), help=field.metadata["help"],
                   choices=field.metadata.get("choices"))
  args = p.parse_args(argv)
  cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
  if cfg.workers < 1:
    p.error("--workers must be at least 1")
  return args, cfg


async def serve(args: argparse.Namespace, cfg: Config) -> int:
  service = Service(cfg)
  app = service.app()
  runner = web.AppRunner(app, access_log=None, handle_signals=False)
  await runner.setup()  # starts the workers and measures the isolation layers
  layers = service.pool.layers
  log.info("isolation layers (%s):\n%s", service.pool.layer_details,
           "\n".join(describe_layers(layers)))
  missing = [name for name, on in layers.items() if not on]
  if missing and args.strict:
    log.error("--strict: refusing to start, inactive isolation layers: %s", ", ".join(missing))
    await runner.cleanup()
    return 2
  if missing:
    log.warning("running WITHOUT these isolation layers: %s", ", ".join(missing))
  site = web.TCPSite(runner, args.host, args.port, backlog=1024)
  await site.start()
  log.info("executor listening on http://%s:%d with %d workers", args.host, args.port, cfg.workers)
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGINT, signal.SIGTERM):
    loop.add_signal_handler(sig, stop.set)
  await stop.wait()
  log.info("shutting down")
  await runner.cleanup()
  return 0


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                      stream=sys.stderr)
  args, cfg = parse_args(argv)
  return asyncio.run(serve(args, cfg))


if __name__ == "__main__":
  sys.exit(main())
