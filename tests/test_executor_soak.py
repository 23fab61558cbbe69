"""Soak: 2,000 calls at concurrency 16 mixing good and hostile code; nothing leaks."""

import asyncio
import io
import random
import time

import psutil
from PIL import Image

from codevision_jax.execution.client import ExecutorClient
from executor.local import local_service

CALLS = 2000
CONCURRENCY = 16

GOOD = [
  "result = image.crop((4, 4, 40, 30))",
  "result = image.rotate(90, expand=True)",
  "result = ImageOps.mirror(image).filter(ImageFilter.GaussianBlur(1))",
  "a = np.asarray(image)\nresult = cv2.flip(a[2:20, 3:30], 0)",
  "print(image.size, np.asarray(image).mean())",
]
HOSTILE = [
  "import socket\nsocket.socket()",
  "import os\nos.system('id')",
  "open('/tmp/x', 'w')",
  "x = 'a' * (10 ** 11)",
  "while True:\n  print('y' * 4096)",
  "import builtins\nbuiltins.len = None\nnp.array = None\nraise ValueError('tampered')",
  "import os\nos.fork()",
  "1 / 0",
  "import os\nos.kill(os.getppid(), 9)",
]


def _tree(pid: int) -> list[psutil.Process]:
  root = psutil.Process(pid)
  return [root] + root.children(recursive=True)


def _snapshot(pid: int) -> dict:
  procs = _tree(pid)
  return {
    "count": len(procs),
    "zombies": sum(p.status() == psutil.STATUS_ZOMBIE for p in procs),
    "fds": sum(p.num_fds() for p in procs),
    "rss": sum(p.memory_info().rss for p in procs),
  }


def _settled(service, pid: int) -> dict:
  """A snapshot once no call is running and every worker has its spare child again."""
  deadline = time.monotonic() + 30
  while True:
    time.sleep(0.5)
    snap = _snapshot(pid)
    if (service.get_json("/healthz")["busy"] == 0 and snap == _snapshot(pid)) or time.monotonic() > deadline:
      return snap


def test_soak_no_leaks():
  buf = io.BytesIO()
  Image.new("RGB", (48, 36), "teal").save(buf, "PNG")
  img = buf.getvalue()
  rng = random.Random(0)
  plan = []
  for i in range(CALLS):
    r = rng.random()
    if r < 0.01:
      plan.append(("import time\ntime.sleep(5)", 0.3, "TimeoutError"))
    elif r < 0.25:
      plan.append((rng.choice(HOSTILE), 5.0, "error"))
    else:
      plan.append((rng.choice(GOOD), 5.0, None))

  with local_service(workers=2) as service:

    async def run(calls):
      sem = asyncio.Semaphore(CONCURRENCY)
      async with ExecutorClient(service.url, max_connections=CONCURRENCY) as client:

        async def one(code, timeout, expect):
          async with sem:
            res = await client.execute(code, [img], timeout_s=timeout)
          if expect is None:
            assert res.ok, (code, res.error)
          else:
            assert not res.ok, code
            if expect == "TimeoutError":
              assert res.error["type"] == "TimeoutError"

        await asyncio.gather(*(one(*c) for c in calls))

    asyncio.run(run(plan[:200]))  # warm-up: image store, connection pools, allocator arenas
    before = _settled(service, service.proc.pid)
    asyncio.run(run(plan[200:]))
    after = _settled(service, service.proc.pid)
    metrics = service.get_text("/metrics")
    pids = [p.pid for p in _tree(service.proc.pid)]
  # Stopping the service leaves nothing behind.
  time.sleep(1.0)
  left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
  assert left == [], left
  print("soak process tree before/after:", before, after)

  assert after["count"] == before["count"], (before, after)
  assert after["zombies"] == 0
  assert after["fds"] <= before["fds"], (before, after)
  assert after["rss"] - before["rss"] < 32 << 20, (before, after)  # flat: < 32 MiB drift
  assert f"executor_calls_total {CALLS}" in metrics
  assert "executor_worker_restarts_total 0" in metrics
