"""Service behaviour around the calls: bounded queue (429), --strict, and the asyncio client."""

import asyncio
import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
from PIL import Image

from codevision_jax.execution.client import ExecResult, ExecutorClient, ExecutorUnavailable
from executor.config import Config
from executor.local import REPO_ROOT, free_port, local_service


def _png(color: str, size=(16, 12)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def small():
  """One worker, one queue slot, an image store that keeps nothing, 1 MB request bodies."""
  with local_service("--queue-size", "1", "--image-cache-mb", "0", "--max-request-mb", "1", workers=1) as s:
    yield s


def _metric(service, name: str) -> float:
  for line in service.get_text("/metrics").splitlines():
    if line.startswith(name + " "):
      return float(line.split()[1])
  raise KeyError(name)


def test_full_queue_answers_429_with_a_retry_hint(small):
  async def main():
    async with aiohttp.ClientSession() as session:

      async def one():
        body = {"code": "import time\ntime.sleep(0.5)\nprint('done')", "images": []}
        async with session.post(small.url + "/v1/execute", json=body) as r:
          return r.status, dict(r.headers), await r.json()

      return await asyncio.gather(*(one() for _ in range(5)))

  results = asyncio.run(main())
  statuses = sorted(r[0] for r in results)
  assert statuses.count(200) >= 2 and 429 in statuses, statuses
  for status, headers, body in results:
    if status == 429:
      assert int(headers["Retry-After"]) >= 1
      assert body["retry_after_s"] > 0 and body["error"]["type"] == "QueueFull"
    else:
      assert body["ok"] and body["stdout"] == "done\n"
  assert _metric(small, "executor_rejected_total") >= 1


def test_client_retries_429_and_transport_errors_round_robin(small):
  dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there

  async def main():
    async with ExecutorClient([dead, small.url], retries=20, backoff_s=0.02) as client:
      code = "import time\ntime.sleep(0.2)\nresult = image"
      return await asyncio.gather(*(client.execute(code, [_png("red")]) for _ in range(4)))

  results = asyncio.run(main())
  assert all(isinstance(r, ExecResult) and r.ok for r in results)
  assert {r.address for r in results} == {small.url}
  assert results[0].pil_images()[0].size == (16, 12)


def test_client_never_retries_code_errors(small):
  before = _metric(small, "executor_calls_total")

  async def main():
    async with ExecutorClient(small.url) as client:
      return await client.execute("x = 1\ny = x / 0", [])

  res = asyncio.run(main())
  assert not res.ok
  assert res.error_text() == "ZeroDivisionError: division by zero (line 2: y = x / 0)"
  assert _metric(small, "executor_calls_total") == before + 1


def test_client_deadline(small):
  async def main():
    async with ExecutorClient(small.url, deadline_s=0.5) as client:
      t0 = time.monotonic()
      with pytest.raises(ExecutorUnavailable):
        await client.execute("import time\ntime.sleep(3)", [], timeout_s=3)
      return time.monotonic() - t0

  assert asyncio.run(main()) < 3


def test_client_sends_references_and_falls_back_to_bytes(small):
  sent = []

  async def main():
    async with ExecutorClient(small.url) as client:
      original = client._payload_images  # pylint: disable=protected-access

      def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        sent.append(out)
        return out

      client._payload_images = spy  # pylint: disable=protected-access
      img = _png("blue")
      first = await client.execute("result = image.crop((0, 0, 4, 4))", [img])
      # This server keeps no images, so the reference is refused and the bytes are resent.
      second = await client.execute("result = image.crop((0, 0, 4, 4))", [img])
      return first, second

  before = _metric(small, "executor_bad_requests_total")
  first, second = asyncio.run(main())
  assert first.ok and second.ok
  assert not sent[0][0].startswith("sha256:")
  assert sent[1][0].startswith("sha256:") and not sent[2][0].startswith("sha256:")
  assert _metric(small, "executor_bad_requests_total") == before + 1


def test_client_references_with_a_caching_server():
  with local_service(workers=1) as service:

    async def main():
      async with ExecutorClient(service.url) as client:
        img = _png("green")
        ref = await client.upload(img)
        first = await client.execute("result = image.rotate(90, expand=True)", [img])
        second = await client.execute("print(images[1].size)", [img, first.images[0]], image_index=1)
        payload = client._payload_images(  # pylint: disable=protected-access
          service.url, [img, first.images[0]], [ref, first.image_refs[0]], False
        )
        return ref, first, second, payload

    ref, first, second, payload = asyncio.run(main())
  assert ref.startswith("sha256:")
  assert first.ok and first.ops[0]["angle"] == 90
  assert second.stdout == "(12, 16)\n"
  assert payload == [ref, first.image_refs[0]]  # both held by the server: no bytes resent


def test_a_killed_worker_is_replaced(small):
  import psutil  # pylint: disable=import-outside-toplevel

  root = psutil.Process(small.proc.pid)
  workers = [
    p
    for p in root.children(recursive=True)
    if "executor.worker" in " ".join(p.cmdline()) and p.name().startswith("python") and p.parent().name() == "bwrap"
  ]
  assert len(workers) == 1
  workers[0].kill()

  async def main():
    async with ExecutorClient(small.url) as client:
      return [await client.execute("print('alive')", []) for _ in range(3)]

  results = asyncio.run(main())
  assert all(r.ok or r.error["type"] == "ExecutorError" for r in results)
  assert results[-1].ok and results[-1].stdout == "alive\n"
  assert small.get_json("/healthz")["workers"] == 1
  assert _metric(small, "executor_worker_restarts_total") == 1


def test_strict_refuses_to_start_without_every_layer():
  port = free_port()
  proc = subprocess.run(
    [sys.executable, "-m", "executor", "--port", str(port), "--workers", "1", "--isolation", "none", "--strict"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert "[INACTIVE] bubblewrap" in proc.stderr
  assert "--strict: refusing to start" in proc.stderr


def _request(service, method: str, path: str, data: bytes = b"", content_type="application/json"):
  req = urllib.request.Request(
    service.url + path, data=data or None, method=method, headers={"Content-Type": content_type}
  )
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      return r.status, r.headers.get("Content-Type", ""), json.load(r)
  except urllib.error.HTTPError as e:
    return e.code, e.headers.get("Content-Type", ""), json.loads(e.read())


def _refused(service, status: int, kind: str) -> float:
  try:
    return _metric(service, f'executor_refused_total{{status="{status}",type="{kind}"}}')
  except KeyError:
    return 0.0


def test_every_error_answer_is_json_and_counted(small):
  """413 (a body over --max-request-mb), an unknown path, a wrong method and a truncated input
  image (400, like any other unreadable image) answer JSON with the error's type and message."""
  truncated = _png("red", (64, 64))[:-40]
  cases = [
    (
      "POST",
      "/v1/execute",
      json.dumps({"code": "x", "images": ["A" * (2 << 20)]}).encode(),
      413,
      "RequestEntityTooLarge",
      "--max-request-mb",
    ),
    ("PUT", "/v1/images", b"\x89PNG\r\n\x1a\n" + bytes(2 << 20), 413, "RequestEntityTooLarge", "PUT /v1/images"),
    ("GET", "/v2/execute", b"", 404, "NotFound", "no endpoint /v2/execute"),
    ("GET", "/v1/execute", b"", 405, "MethodNotAllowed", "does not answer GET"),
    (
      "POST",
      "/v1/execute",
      json.dumps({"code": "result = image", "images": [base64.b64encode(truncated).decode()]}).encode(),
      400,
      "InputImageError",
      "input image 0 is not a readable PNG or JPEG",
    ),
  ]
  for method, path, data, status, kind, words in cases:
    before = _refused(small, status, kind)
    got, content_type, body = _request(
      small, method, path, data, "application/octet-stream" if method == "PUT" else "application/json"
    )
    assert (got, body["error"]["type"]) == (status, kind), body
    assert content_type.startswith("application/json") and body["ok"] is False
    assert words in body["error"]["message"], body["error"]["message"]
    assert _refused(small, status, kind) == before + 1

  # The service still answers, and the client reports a 4xx as a refused request.
  async def main():
    async with ExecutorClient(small.url) as client:
      with pytest.raises(ValueError, match="input image 0 is not a readable PNG or JPEG"):
        await client.execute("result = image", [truncated])
      return await client.execute("print('alive')", [])

  assert asyncio.run(main()).stdout == "alive\n"


def test_a_timeout_above_the_maximum_runs_with_the_maximum_and_says_so(small):
  body = json.dumps({"code": "print('ok')", "images": [], "timeout_s": 600}).encode()
  status, _, out = _request(small, "POST", "/v1/execute", body)
  assert status == 200 and out["ok"] and out["stdout"] == "ok\n"
  assert out["notes"] == ["timeout_s 600 is above this service's maximum (--max-timeout-s); the call ran with 60"]
  status, _, out = _request(
    small, "POST", "/v1/execute", json.dumps({"code": "print('ok')", "images": [], "timeout_s": 5}).encode()
  )
  assert out["notes"] == []


def test_help_lists_every_option_with_its_default():
  out = subprocess.run(
    [sys.executable, "-m", "executor", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
  ).stdout
  options = " ".join(out[out.index("options:") :].split())
  for field in dataclasses.fields(Config):
    if field.name == "workers":
      continue
    option = "--" + field.name.replace("_", "-")
    assert option + " " in options, option
    # The option's help ends with its default.
    entry = options[options.index(option + " ") :].split(" --")[0]
    assert f"(default: {getattr(Config(), field.name)})" in entry, (option, entry)
  assert "characters of `code` per call" in options and "(default: 16384)" in options


def test_a_virtual_environment_reached_through_a_symbolic_link(tmp_path):
  """The workers' sandbox binds the interpreter's real directories: a service started with
  `<link>/bin/python`, `<link>` a symbolic link to the environment, becomes healthy with every
  isolation layer it has otherwise, and runs code."""
  link = tmp_path / "env-link"
  os.symlink(sys.prefix, link)
  python = str(link / os.path.relpath(os.path.abspath(sys.executable), sys.prefix))
  with local_service(workers=1) as plain:
    layers = plain.get_json("/healthz")["isolation"]
  with local_service(workers=1, python=python) as linked:
    assert linked.get_json("/healthz")["isolation"] == layers

    async def main():
      async with ExecutorClient(linked.url) as client:
        return await client.execute("result = image.rotate(90, expand=True)", [_png("red")])

    res = asyncio.run(main())
  assert res.ok, res.error
  assert res.pil_images()[0].size == (12, 16)
