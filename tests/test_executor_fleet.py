"""The client against a fleet of executor services: one killed mid-rollout (every call completes,
each answered once, the dead address taken out of rotation), readmission when it is back, code
errors answered once, waiting while every address is out; and the deployment files in
deploy/executor/ agree with the service's options."""

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse

import pytest
from PIL import Image

from codevision_jax.execution.client import ExecutorClient, ExecutorUnavailable
from executor import __main__ as executor_main
from executor.local import REPO_ROOT, LocalService, free_port, local_service

DEPLOY = os.path.join(REPO_ROOT, "deploy", "executor")
CALLS = 72  # calls of the rollout, all in flight at once
KILL_AFTER = 18  # completed calls before one service is killed


def _png(color, size) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, "PNG")
  return buf.getvalue()


IMAGES = [_png((40 * i, 90, 200 - 30 * i), (48 + 8 * i, 40)) for i in range(5)]


def _code(i: int) -> str:
  """A little CPU work, a result that depends on the call: a crop of width i + 1, its number."""
  return f"total = sum(k * k for k in range(20000))\nprint({i})\nresult = image.crop((0, 0, {i % 40 + 1}, 8))"


def _metric(service: LocalService, name: str) -> float:
  """A counter of the service's /metrics (0 when it has no sample yet)."""
  for line in service.get_text("/metrics").splitlines():
    if line.startswith(name + " "):
      return float(line.split()[1])
  return 0.0


def _start_all(stack: contextlib.ExitStack, n: int) -> list[LocalService]:
  """n local services with one worker each, started side by side."""
  managers = [local_service(workers=1) for _ in range(n)]
  with concurrent.futures.ThreadPoolExecutor(n) as pool:
    futures = [pool.submit(m.__enter__) for m in managers]
  for m, f in zip(managers, futures):
    if f.exception() is None:
      stack.push(m.__exit__)
  return [f.result() for f in futures]


@contextlib.contextmanager
def _service_on(port: int):
  """`python -m executor` on a given port (a restarted service keeps its address)."""
  log = tempfile.NamedTemporaryFile(prefix="executor-", suffix=".log", delete=False)
  proc = subprocess.Popen(
    [sys.executable, "-m", "executor", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    cwd=REPO_ROOT,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  service = LocalService(proc, f"http://127.0.0.1:{port}", log.name)
  try:
    deadline = time.monotonic() + 60
    while True:
      assert proc.poll() is None, f"the executor exited:\n{service.log()}"
      try:
        if service.get_json("/healthz")["ok"]:
          break
      except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        pass
      assert time.monotonic() < deadline, f"the executor did not start:\n{service.log()}"
      time.sleep(0.05)
    yield service
  finally:
    proc.kill()
    proc.wait()
    log.close()
    os.unlink(log.name)


async def _until(predicate, timeout_s: float = 20.0) -> None:
  deadline = time.monotonic() + timeout_s
  while not predicate():
    assert time.monotonic() < deadline, "timed out waiting"
    await asyncio.sleep(0.02)


def _check(i: int, res) -> None:
  assert res.ok, res.error_text()
  assert res.stdout == f"{i}\n"
  assert res.pil_images()[0].size == (i % 40 + 1, 8)


def test_one_service_killed_mid_rollout_every_call_answered_once():
  with contextlib.ExitStack() as stack:
    services = _start_all(stack, 3)
    victim = services[1]
    urls = [s.url for s in services]

    async def main():
      async with ExecutorClient(urls, probe_interval_s=0.1, retries=6) as client:
        done, killed = [], asyncio.Event()

        async def one(i):
          res = await client.execute(_code(i), [IMAGES[i % 5], IMAGES[(i + 1) % 5]])
          done.append(i)
          if len(done) == KILL_AFTER:
            killed.set()
          return res

        async def kill():
          await killed.wait()
          victim.proc.kill()  # SIGKILL: its calls in flight are lost with it

        rollout = asyncio.gather(*(one(i) for i in range(CALLS)))
        _, results = await asyncio.gather(kill(), rollout)
        stats = client.stats
        answers = dict(stats.answers)

        # Every call answered once, with its own result.
        assert sorted(done) == list(range(CALLS))
        for i, res in enumerate(results):
          _check(i, res)
        assert sum(answers.values()) == CALLS == stats.calls
        assert stats.unavailable == 0
        # The killed service's calls in flight failed and were answered by the others.
        assert victim.url in client.out_of_rotation and stats.ejections == {victim.url: 1}
        assert stats.failures[victim.url] >= 1 and stats.retries >= 1
        assert answers[victim.url] >= 1  # what it answered before it died stays answered
        # Nothing counted twice: each surviving service ran exactly the calls it answered.
        survivors = [s for s in services if s is not victim]
        for s in survivors:
          assert _metric(s, "executor_calls_total") == answers[s.url], s.url

        # The service comes back on the same address, restarted: an empty image store.
        port = urllib.parse.urlsplit(victim.url).port
        restarted = await asyncio.to_thread(stack.enter_context, _service_on(port))
        await _until(lambda: victim.url in client.in_rotation)
        assert stats.readmissions == {victim.url: 1}
        again = [
          await client.execute(_code(i), [IMAGES[i % 5], IMAGES[(i + 1) % 5]]) for i in range(6)
        ]  # the same images as before, one call at a time
        for i, res in enumerate(again):
          _check(i, res)
        assert {res.address for res in again} == set(urls)  # round robin over all three again
        assert _metric(restarted, "executor_calls_total") == 2
        # The client forgot what the old process held: it sent bytes, not dangling references.
        assert "UnknownImage" not in restarted.get_text("/metrics")

    asyncio.run(main())


def test_code_errors_are_answers_and_never_retried():
  with contextlib.ExitStack() as stack:
    services = _start_all(stack, 2)

    async def main():
      async with ExecutorClient([s.url for s in services]) as client:
        res = await client.execute("x = 1\ny = x / 0", [])
        return res, client.stats

    res, stats = asyncio.run(main())
    assert not res.ok and res.error_text().startswith("ZeroDivisionError: division by zero")
    assert sum(stats.requests.values()) == 1 and stats.retries == 0
    assert sum(stats.answers.values()) == 1 and not stats.ejections
    assert sum(_metric(s, "executor_calls_total") for s in services) == 1


def test_calls_wait_for_an_address_to_come_back():
  """An address down at first is taken out; the call waits, and is answered once it is up."""
  port = free_port()
  url = f"http://127.0.0.1:{port}"

  async def main():
    with contextlib.ExitStack() as stack:
      async with ExecutorClient(url, probe_interval_s=0.1) as client:
        call = asyncio.ensure_future(client.execute(_code(3), [IMAGES[0]]))
        await _until(lambda: not client.in_rotation)
        assert not call.done()
        await asyncio.to_thread(stack.enter_context, _service_on(port))
        return await asyncio.wait_for(call, 30), client.stats

  res, stats = asyncio.run(main())
  _check(3, res)
  assert stats.ejections == {url: 1} and stats.readmissions == {url: 1}
  assert stats.waits == 1 and stats.answers == {url: 1}


def test_every_address_out_until_the_deadline_names_each():
  dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]

  async def main():
    async with ExecutorClient(dead, deadline_s=0.8, probe_interval_s=0.1) as client:
      t0 = time.monotonic()
      with pytest.raises(ExecutorUnavailable) as e:
        await client.execute("result = image", [IMAGES[0]])
      return time.monotonic() - t0, str(e.value), client.stats

  took, message, stats = asyncio.run(main())
  assert 0.7 < took < 5
  for address in dead:
    assert re.search(re.escape(address) + r": out of rotation .*Connect", message), message
  assert stats.unavailable == 1 and stats.waits == 1 and sum(stats.ejections.values()) == 2


# The deployment files.


def _k8s() -> dict[str, dict]:
  yaml = pytest.importorskip("yaml")
  with open(os.path.join(DEPLOY, "kubernetes.yaml"), encoding="utf-8") as f:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(f) if doc}


def _dockerfile_instruction(name: str) -> list[str]:
  with open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8") as f:
    lines = [line for line in f if line.startswith(name + " ")]
  assert len(lines) == 1, f"the Dockerfile should have one {name} (exec form)"
  return json.loads(lines[0][len(name) + 1 :])


def test_dockerfile_runs_the_service_with_flags_it_accepts():
  entrypoint, cmd = _dockerfile_instruction("ENTRYPOINT"), _dockerfile_instruction("CMD")
  assert entrypoint[:3] == ["python", "-m", "executor"]
  args, cfg = executor_main.parse_args(entrypoint[3:] + cmd)  # exits on an unknown flag
  assert args.host == "0.0.0.0" and args.port == 8700 == executor_main.parse_args([])[0].port
  assert cfg.workers >= 1
  # The container's pins are setup.py's.
  with open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8") as f:
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', f.read()))
  with open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8") as f:
    wanted = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", f.read()))
  needed = {"aiohttp", "pyseccomp", "numpy", "pillow", "opencv-python-headless", "psutil"}
  assert needed <= set(wanted)
  assert {k: pins.get(k) for k in wanted} == wanted


def test_kubernetes_probes_and_ports_match_the_service():
  docs = _k8s()
  deployment, service = docs["Deployment"], docs["Service"]
  pod = deployment["spec"]["template"]["spec"]
  (container,) = pod["containers"]
  entrypoint = _dockerfile_instruction("ENTRYPOINT")
  args, cfg = executor_main.parse_args(entrypoint[3:] + container["args"])
  ports = {p["name"]: p["containerPort"] for p in container["ports"]}
  assert list(ports.values()) == [args.port] and args.host == "0.0.0.0"
  for probe in ("readinessProbe", "livenessProbe"):
    get = container[probe]["httpGet"]
    assert get["path"] == "/healthz" and get["port"] in (args.port, *ports), probe
  # Workers match the CPUs the pod is given; memory and CPU are requested and limited.
  resources = container["resources"]
  assert float(resources["limits"]["cpu"]) == cfg.workers
  assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
  assert "--strict" in container["args"]
  labels = deployment["spec"]["selector"]["matchLabels"]
  assert deployment["spec"]["template"]["metadata"]["labels"].items() >= labels.items()
  assert deployment["spec"]["replicas"] >= 2
  assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
  assert service["spec"]["selector"] == labels
  (port,) = service["spec"]["ports"]
  assert port["port"] == 8700 and port["targetPort"] in (args.port, *ports)
