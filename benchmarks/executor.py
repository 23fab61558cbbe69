"""Executor benchmark: in-process `exec` (the reference, no isolation) vs the sandboxed service.

  .venv/bin/python benchmarks/executor.py [--workers 2] [--trivial-calls 300] [--real-calls 400]

One process, one run: it measures the reference first, then starts the service (same machine) and
drives it with the asyncio client. Both paths do the same work per call: PNG bytes in, decode, run
the code, PNG bytes out (compress level 1, as the service).
  - trivial code (`result = image`, 64x64 image), one call at a time: the fixed per-call overhead
    is the service's median latency minus the reference's;
  - a realistic call (1024x1024 image: crop, rotate 30 degrees with expand, Gaussian blur, PNG
    out): throughput at `--concurrency` calls in flight, and p50/p99 latency.
Targets (2-core machine): overhead <= 5 ms median, >= 1,500 realistic calls/minute, p99 < 3x p50.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from codevision_jax.tools.executor_client import ExecutorClient
from executor.testing import running_service

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


def in_process(code: str, png: bytes) -> bytes:
  """The reference approach: exec in this process, no isolation (same work as the service)."""
  image = Image.open(io.BytesIO(png)).convert("RGB")
  namespace = {"image": image, "img": image, "images": [image], "Image": Image,
               "ImageDraw": ImageDraw, "ImageEnhance": ImageEnhance, "ImageFilter": ImageFilter,
               "ImageOps": ImageOps, "np": np, "cv2": cv2, "math": math}
  exec(compile(code, "<code>", "exec"), namespace)  # pylint: disable=exec-used
  buf = io.BytesIO()
  namespace["result"].save(buf, "PNG", compress_level=1)
  return buf.getvalue()


def pct(values: list[float], q: float) -> float:
  values = sorted(values)
  return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def bench_in_process(code: str, png: bytes, calls: int) -> tuple[list[float], float]:
  for _ in range(5):
    in_process(code, png)
  lat = []
  t0 = time.perf_counter()
  for _ in range(calls):
    t = time.perf_counter()
    in_process(code, png)
    lat.append(time.perf_counter() - t)
  return lat, time.perf_counter() - t0


async def bench_service(url: str, code: str, png: bytes, calls: int,
                        concurrency: int) -> tuple[list[float], float]:
  async with ExecutorClient(url, max_connections=concurrency) as client:
    for _ in range(max(5, concurrency)):
      res = await client.execute(code, [png])
      assert res.ok, res.error_text()
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []

    async def one():
      async with sem:
        t = time.perf_counter()
        res = await client.execute(code, [png])
        lat.append(time.perf_counter() - t)
        assert res.ok, res.error_text()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return lat, time.perf_counter() - t0


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
  p.add_argument("--trivial-calls", type=int, default=300)
  p.add_argument("--real-calls", type=int, default=400)
  p.add_argument("--concurrency", type=int, default=0, help="default: 2 x workers")
  args = p.parse_args()
  concurrency = args.concurrency or 2 * args.workers
  small, big = make_image(64), make_image(1024)
  print(f"machine: {os.cpu_count()} CPUs; service workers: {args.workers}; "
        f"realistic input: 1024x1024 PNG of {len(big) / 1024:.0f} KiB")

  ref_triv, _ = bench_in_process(TRIVIAL_CODE, small, args.trivial_calls)
  ref_real, ref_real_wall = bench_in_process(REAL_CODE, big, min(args.real_calls, 150))

  with running_service(workers=args.workers) as service:
    layers = service.get_json("/healthz")["isolation"]
    svc_triv, _ = asyncio.run(bench_service(service.url, TRIVIAL_CODE, small,
                                            args.trivial_calls, 1))
    svc_real, svc_real_wall = asyncio.run(bench_service(service.url, REAL_CODE, big,
                                                        args.real_calls, concurrency))
  active = [k for k, v in layers.items() if v]
  print(f"isolation layers active: {len(active)}/{len(layers)} ({', '.join(active)})")

  ms = 1000.0
  triv_ref, triv_svc = statistics.median(ref_triv) * ms, statistics.median(svc_triv) * ms
  print("\n[trivial] `result = image` on 64x64, one call at a time")
  print(f"  in-process exec  median {triv_ref:7.2f} ms   p99 {pct(ref_triv, 99) * ms:7.2f} ms")
  print(f"  service          median {triv_svc:7.2f} ms   p99 {pct(svc_triv, 99) * ms:7.2f} ms")
  print(f"  fixed overhead   {triv_svc - triv_ref:7.2f} ms median   (target <= 5 ms)   "
        f"ratio service/in-process {triv_svc / triv_ref:.1f}x")

  ref_rate = len(ref_real) / ref_real_wall * 60
  svc_rate = len(svc_real) / svc_real_wall * 60
  p50, p99 = statistics.median(svc_real) * ms, pct(svc_real, 99) * ms
  print(f"\n[realistic] crop + rotate 30 expand + Gaussian blur + PNG out, 1024x1024")
  print(f"  in-process exec  {ref_rate:8.0f} calls/min (1 process, sequential)   "
        f"median {statistics.median(ref_real) * ms:7.2f} ms   p99 {pct(ref_real, 99) * ms:7.2f} ms")
  print(f"  service          {svc_rate:8.0f} calls/min ({args.workers} workers, {concurrency} in "
        f"flight)   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
  print(f"  throughput ratio service/in-process {svc_rate / ref_rate:.2f}x   (target >= 1500/min)")
  print(f"  p99/p50 {p99 / p50:.2f}   (target < 3)")


if __name__ == "__main__":
  main()
