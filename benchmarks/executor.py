"""Executor benchmark: in-process `exec` (the reference, no isolation) vs the sandboxed service.

  .venv/bin/python benchmarks/executor.py [--workers 2] [--trivial-calls 300] [--real-calls 400]

One process, one run: it measures the reference first, then starts the service (same machine) and
drives it with the asyncio client. Both paths do the same work per call: PNG bytes in, decode, run
the code, PNG bytes out (executor/png.py at compress level 1, as the service).
  - trivial code (`result = image`, 64x64 image), one call at a time: the fixed per-call overhead
    is the service's median latency minus the reference's. Measured twice: with `--gap-ms` between
    calls (an isolated call: what one tool call adds to a rollout), and back to back (each call
    then shares the two cores with the clean-up of the call before and the fork of the next
    call's process, which the service does off the critical path);
  - a realistic call (1024x1024 image: crop, rotate 30 degrees with expand, Gaussian blur, PNG
    out): throughput at `--concurrency` calls in flight, and p50/p99 latency; and the ceiling of
    the code plus the PNG out alone (no decode, no isolation, no HTTP) on every core;
  - the result PNG written by Pillow (level 1) and by executor/png.py.
Targets (2-core machine): overhead <= 5 ms median, >= 1,500 realistic calls/minute, p99 < 3x p50.

The machine may be shared, so the script also prints CPU time per call (this process plus every
process of the service, call children included) and the calls/minute that CPU time allows on all
of this machine's cores: a figure that other load on the machine distorts much less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import statistics
import subprocess
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from codevision_jax.execution.client import ExecutorClient
from codevision_jax.processing import png as png_lib
from executor.local import local_service

TRIVIAL_CODE = "result = image"
REAL_CODE = """
region = image.crop((112, 96, 912, 896))
turned = region.rotate(30, expand=True)
result = turned.filter(ImageFilter.GaussianBlur(radius=2))
"""


def make_image(size: int, seed: int = 0) -> bytes:
  """A synthetic document-like RGB image (gradients, boxes, text, mild noise) as PNG bytes."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size]
  base = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.int16)
  base += rng.integers(-6, 7, base.shape, dtype=np.int16)
  im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(im)
  box = max(size // 16, 8)
  for i in range(12):
    x0, y0 = (int(v) for v in rng.integers(0, size - box, 2))
    draw.rectangle((x0, y0, x0 + box, y0 + box // 2), outline=(0, 0, 0), width=2)
    draw.text((x0 + 2, y0 + 2), f"label {i}", fill=(10, 10, 10))
  buf = io.BytesIO()
  im.save(buf, "PNG")
  return buf.getvalue()


def run_code(code: str, image: Image.Image) -> Image.Image:
  namespace = {
    "image": image,
    "img": image,
    "images": [image],
    "Image": Image,
    "ImageDraw": ImageDraw,
    "ImageEnhance": ImageEnhance,
    "ImageFilter": ImageFilter,
    "ImageOps": ImageOps,
    "np": np,
    "cv2": cv2,
    "math": math,
  }
  exec(compile(code, "<code>", "exec"), namespace)  # pylint: disable=exec-used
  return namespace["result"]


def code_and_png_out(code: str, image: Image.Image) -> bytes:
  """The least work a call must do: the code on an image already decoded, and the PNG out."""
  return png_lib.encode(run_code(code, image))


def in_process(code: str, png: bytes) -> bytes:
  """The reference approach: exec in this process, no isolation (same work as the service)."""
  return code_and_png_out(code, Image.open(io.BytesIO(png)).convert("RGB"))


def pil_png(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, "PNG", compress_level=1)
  return buf.getvalue()


def pct(values: list[float], q: float) -> float:
  values = sorted(values)
  return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def usage(pids: list[int]) -> tuple[float, int]:
  """CPU seconds and minor page faults of these processes and their descendants, exited ones included."""
  cpu, faults = 0.0, 0
  seen = set()
  for pid in pids:
    root = psutil.Process(pid)
    for proc in [root] + root.children(recursive=True):
      if proc.pid in seen:
        continue
      seen.add(proc.pid)
      try:
        t = proc.cpu_times()
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
        continue
      cpu += t.user + t.system + t.children_user + t.children_system
      faults += int(fields[7]) + int(fields[8])  # minflt, cminflt
  return cpu, faults


class Run:
  """Latencies, wall time, CPU time and minor page faults of one measured batch of calls."""

  def __init__(self, lat: list[float], wall: float, before: tuple[float, int], after: tuple[float, int]):
    self.lat, self.wall = lat, wall
    self.cpu, self.faults = after[0] - before[0], after[1] - before[1]

  @property
  def faults_per_call(self) -> float:
    return self.faults / len(self.lat)

  @property
  def per_min(self) -> float:
    return len(self.lat) / self.wall * 60

  @property
  def cpu_ms(self) -> float:
    return self.cpu / len(self.lat) * 1000

  def cpu_bound_per_min(self) -> float:
    return (os.cpu_count() or 1) * 60 / (self.cpu / len(self.lat))


def bench_in_process(fn, args: tuple, calls: int, gap_s: float = 0.0) -> Run:
  """`calls` sequential calls of fn(*args), `gap_s` apart."""
  for _ in range(5):
    fn(*args)
  lat = []
  u0, t0 = usage([os.getpid()]), time.perf_counter()
  for _ in range(calls):
    if gap_s:
      time.sleep(gap_s)
    t = time.perf_counter()
    fn(*args)
    lat.append(time.perf_counter() - t)
  return Run(lat, time.perf_counter() - t0, u0, usage([os.getpid()]))


async def bench_service(
  url: str, service_pid: int, code: str, png: bytes, calls: int, concurrency: int, gap_s: float = 0.0
) -> Run:
  async with ExecutorClient(url, max_connections=concurrency) as client:
    for _ in range(max(5, concurrency)):
      res = await client.execute(code, [png])
      assert res.ok, res.error_text()
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    pids = [os.getpid(), service_pid]
    u0 = usage(pids)

    async def one():
      async with sem:
        if gap_s:
          await asyncio.sleep(gap_s)
        t = time.perf_counter()
        res = await client.execute(code, [png])
        lat.append(time.perf_counter() - t)
        assert res.ok, res.error_text()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    wall = time.perf_counter() - t0
    return Run(lat, wall, u0, usage(pids))


def worker_critical_path(calls: int, idle_s: float = 0.03) -> None:
  """Times one worker's part of a trivial call (request in, reply out), no HTTP, idle gaps between.

  Runs in its own process (`--worker-critical-path`): installing the trace wraps PIL and numpy.
  """
  import gc  # pylint: disable=import-outside-toplevel
  from executor import trace, worker  # pylint: disable=import-outside-toplevel
  from executor.config import Config  # pylint: disable=import-outside-toplevel

  worker._warm_up()  # pylint: disable=protected-access
  trace.install()
  w = worker.Worker(Config())
  gc.collect()
  gc.freeze()
  req = {"code": TRIVIAL_CODE, "timeout_s": 5.0, "image_index": 0}
  png = make_image(64)
  lat = []
  for _ in range(calls):
    w.prepare()
    time.sleep(idle_s)
    t = time.perf_counter()
    reply, _ = w.handle(req, [png])
    lat.append(time.perf_counter() - t)
    assert reply["ok"], reply
  print(
    f"  worker's part of the critical path (no HTTP, no bubblewrap, {idle_s * 1000:.0f} ms idle "
    f"between calls): median {statistics.median(lat) * 1000:.2f} ms"
  )
  fork_exit = []
  for _ in range(calls):
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
      os._exit(0)  # pylint: disable=protected-access
    os.waitpid(pid, 0)
    fork_exit.append(time.perf_counter() - t)
  print(
    f"  fork of the warm worker + exit of a child that does nothing: median "
    f"{statistics.median(fork_exit) * 1000:.2f} ms"
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
  p.add_argument("--trivial-calls", type=int, default=300)
  p.add_argument("--real-calls", type=int, default=400)
  p.add_argument("--concurrency", type=int, default=0, help="default: 2 x workers")
  p.add_argument("--gap-ms", type=float, default=20.0, help="idle time between isolated trivial calls (both paths)")
  p.add_argument("--worker-critical-path", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker_critical_path:
    worker_critical_path(args.trivial_calls)
    return
  concurrency = args.concurrency or 2 * args.workers
  gap = args.gap_ms / 1000
  cores = os.cpu_count() or 1
  small, big = make_image(64), make_image(1024)
  print(
    f"machine: {cores} CPUs; service workers: {args.workers}; "
    f"realistic input: 1024x1024 PNG of {len(big) / 1024:.0f} KiB"
  )

  load_before = os.getloadavg()[0]
  ref_iso = bench_in_process(in_process, (TRIVIAL_CODE, small), args.trivial_calls, gap)
  ref_b2b = bench_in_process(in_process, (TRIVIAL_CODE, small), args.trivial_calls)
  real_calls = min(args.real_calls, 150)
  ref_real = bench_in_process(in_process, (REAL_CODE, big), real_calls)
  decoded = Image.open(io.BytesIO(big)).convert("RGB")
  floor = bench_in_process(code_and_png_out, (REAL_CODE, decoded), real_calls)
  result = run_code(REAL_CODE, decoded)
  enc_pil = bench_in_process(pil_png, (result,), 30)
  enc_ours = bench_in_process(png_lib.encode, (result,), 30)

  with local_service(workers=args.workers) as service:
    layers = service.get_json("/healthz")["isolation"]
    pid = service.proc.pid
    svc_iso = asyncio.run(bench_service(service.url, pid, TRIVIAL_CODE, small, args.trivial_calls, 1, gap))
    svc_b2b = asyncio.run(bench_service(service.url, pid, TRIVIAL_CODE, small, args.trivial_calls, 1))
    svc_real = asyncio.run(bench_service(service.url, pid, REAL_CODE, big, args.real_calls, concurrency))
  active = [k for k, v in layers.items() if v]
  print(f"isolation layers active: {len(active)}/{len(layers)} ({', '.join(active)})")
  print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")

  ms = 1000.0
  print("\n[trivial] `result = image` on 64x64, one call at a time")
  for label, ref, svc in (
    (f"isolated ({args.gap_ms:g} ms apart)", ref_iso, svc_iso),
    ("back to back", ref_b2b, svc_b2b),
  ):
    triv_ref, triv_svc = statistics.median(ref.lat) * ms, statistics.median(svc.lat) * ms
    print(f"  {label}")
    for name, run in (("in-process exec", ref), ("service        ", svc)):
      print(
        f"    {name}  median {statistics.median(run.lat) * ms:7.2f} ms   "
        f"p99 {pct(run.lat, 99) * ms:7.2f} ms   CPU {run.cpu_ms:6.2f} ms/call   "
        f"{run.faults_per_call:6.0f} page faults/call"
      )
    print(
      f"    fixed overhead   {triv_svc - triv_ref:7.2f} ms median (target <= 5 ms); "
      f"{svc.cpu_ms - ref.cpu_ms:.2f} ms CPU; ratio service/in-process "
      f"{triv_svc / triv_ref:.1f}x"
    )
  sys.stdout.flush()
  subprocess.run(
    [
      sys.executable,
      os.path.abspath(__file__),
      "--worker-critical-path",
      "--trivial-calls",
      str(min(args.trivial_calls, 100)),
    ],
    check=True,
  )

  p50, p99 = statistics.median(svc_real.lat) * ms, pct(svc_real.lat, 99) * ms
  print("\n[realistic] crop + rotate 30 expand + Gaussian blur + PNG out, 1024x1024")
  print(
    f"  in-process exec  {ref_real.per_min:6.0f} calls/min (1 process, sequential)   "
    f"p50 {statistics.median(ref_real.lat) * ms:7.2f} ms   p99 {pct(ref_real.lat, 99) * ms:7.2f} ms"
    f"   CPU {ref_real.cpu_ms:6.1f} ms/call -> {ref_real.cpu_bound_per_min():.0f} calls/min "
    f"on {cores} idle cores   {ref_real.faults_per_call:.0f} page faults/call"
  )
  print(
    f"  service          {svc_real.per_min:6.0f} calls/min ({args.workers} workers, "
    f"{concurrency} in flight)   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   CPU "
    f"{svc_real.cpu_ms:6.1f} ms/call -> {svc_real.cpu_bound_per_min():.0f} calls/min on "
    f"{cores} idle cores   {svc_real.faults_per_call:.0f} page faults/call"
  )
  print(
    f"  throughput ratio service/in-process {svc_real.per_min / ref_real.per_min:.2f}x "
    f"(target >= 1500/min); CPU per call service/in-process "
    f"{svc_real.cpu_ms / ref_real.cpu_ms:.2f}x"
  )
  print(f"  p99/p50 {p99 / p50:.2f}   (target < 3)")
  print(
    f"  ceiling: the code + PNG out alone (image already decoded, no isolation, no HTTP) "
    f"costs {floor.cpu_ms:.1f} ms CPU/call -> at most {floor.cpu_bound_per_min():.0f} "
    f"calls/min on {cores} cores"
  )

  print("\n[encode] the realistic result, {0}x{1}, as PNG".format(*result.size))
  size_pil, size_ours = len(pil_png(result)), len(png_lib.encode(result))
  print(f"  Pillow, level 1        {statistics.median(enc_pil.lat) * ms:6.1f} ms  {size_pil / 1024:6.0f} KiB")
  print(
    f"  executor/png.py        {statistics.median(enc_ours.lat) * ms:6.1f} ms  "
    f"{size_ours / 1024:6.0f} KiB   ({statistics.median(enc_pil.lat) / statistics.median(enc_ours.lat):.2f}x "
    f"faster, {size_ours / size_pil:.2f}x the size)"
  )


if __name__ == "__main__":
  main()
