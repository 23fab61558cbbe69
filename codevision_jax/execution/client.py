"""Asyncio client for the executor service (executor/, docs/executor.md).

One `ExecutorClient` holds a pooled aiohttp session to one or more service addresses and spreads
calls over them round robin. Each call has a deadline covering all its attempts; transport errors,
5xx answers and 429 (queue full) are retried on the next address, code errors never (they are
answers: `ExecResult.ok` is False and `error_text()` is what the model should see).

Images are sent once per address: the client remembers which images (by sha256) each address
holds, inputs it sent inline and results it returned, and sends `sha256:` references instead of
the bytes afterwards. When a server has dropped an image from its store, the call is resent with
the bytes.

  async with ExecutorClient(["http://10.0.0.5:8700", "http://10.0.0.6:8700"]) as client:
    res = await client.execute("result = image.rotate(90, expand=True)", [png_bytes])
    res.images  # PNG bytes; res.ops: what the code did; res.stdout
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import io
import itertools
import logging
import time
from typing import Any, Sequence

import aiohttp

from codevision_jax.processing import png


class ExecutorUnavailable(Exception):
  """No address answered within the deadline (transport errors, 5xx or 429 on every attempt)."""


async def _health(session: aiohttp.ClientSession, address: str, timeout_s: float) -> str | None:
  """None when `address` answers GET /healthz with ok true; else what went wrong."""
  try:
    async with session.get(f"{address}/healthz",
                           timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
      body = await resp.json(content_type=None)
      if resp.status == 200 and isinstance(body, dict) and body.get("ok"):
        return None
      return f"answered HTTP {resp.status}: {body}"
  except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError) as e:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def healthy_services(addresses: Sequence[str], *, timeout_s: float = 10.0) -> list[str]:
  """The addresses whose GET /healthz answers ok (a warning names the others); raises
  ExecutorUnavailable naming every address and its failure when none does."""
  addresses = [a.rstrip("/") for a in addresses]
  async with aiohttp.ClientSession() as session:
    problems = await asyncio.gather(*(_health(session, a, timeout_s) for a in addresses))
  good = [a for a, p in zip(addresses, problems) if p is None]
  bad = [f"  {a}: {p}" for a, p in zip(addresses, problems) if p is not None]
  if not good:
    raise ExecutorUnavailable(
        "no executor service answers /healthz:\n" + "\n".join(bad) + "\nStart one with "
        "`python -m executor --port 8700` (see docs/executor.md) and pass its URL in "
        "executor.urls, or leave executor.urls empty to start a local service for the run")
  if bad:
    logging.warning("executor services that do not answer /healthz are left out:\n%s",
                    "\n".join(bad))
  return good


@dataclasses.dataclass
class ExecResult:
  """One executed call."""
  ok: bool
  images: list[bytes]           # result images, PNG bytes
  stdout: str
  error: dict[str, Any] | None  # {"type", "message", "line"} when ok is False
  ops: list[dict[str, Any]]     # the runtime trace (codevision_jax/execution/ops.py)
  duration_ms: float            # server-side time for the call
  address: str                  # which service answered
  image_refs: list[str] = dataclasses.field(default_factory=list)  # "sha256:..." of `images`
  # Per result image: {"source": input index, "map": [a, b, c, d, e, f]} taking its pixel
  # coordinates to that input's (source x = a*x + b*y + c, y = d*x + e*y + f), or None.
  result_maps: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)  # e.g. a timeout_s clamped to the maximum

  def error_text(self) -> str:
    """The error as the model should read it, e.g. 'ZeroDivisionError: division by zero (line 3)'."""
    if self.error is None:
      return ""
    return f"{self.error.get('type', 'Error')}: {self.error.get('message', '')}"

  def pil_images(self) -> list:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    return [Image.open(io.BytesIO(b)) for b in self.images]


def _ref(data: bytes) -> str:
  return "sha256:" + hashlib.sha256(data).hexdigest()


def _to_bytes(image: Any) -> bytes:
  if isinstance(image, (bytes, bytearray, memoryview)):
    return bytes(image)
  if hasattr(image, "save"):  # a PIL image
    return png.encode(image)
  raise TypeError(f"an image must be PNG/JPEG bytes or a PIL image, not {type(image).__name__}")


class ExecutorClient:
  """Pooled, retrying, round-robin client. Use as `async with`, or call `close()`."""

  def __init__(self, addresses: str | Sequence[str], *, max_connections: int = 64,
               deadline_s: float | None = None, retries: int = 4, backoff_s: float = 0.05,
               remember_images: int = 4096):
    """`deadline_s` (per call, all attempts) defaults to the call's timeout + 30 s."""
    self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
    if not self.addresses:
      raise ValueError("ExecutorClient needs at least one address")
    self.addresses = [a.rstrip("/") for a in self.addresses]
    self.deadline_s = deadline_s
    self.retries = retries
    self.backoff_s = backoff_s
    self._max_connections = max_connections
    self._next = itertools.cycle(range(len(self.addresses)))
    self._session: aiohttp.ClientSession | None = None
    self._remember = remember_images
    self._held: dict[str, collections.OrderedDict[str, None]] = {
        a: collections.OrderedDict() for a in self.addresses}

  async def __aenter__(self) -> "ExecutorClient":
    return self

  async def __aexit__(self, *exc) -> None:
    await self.close()

  async def close(self) -> None:
    if self._session is not None:
      await self._session.close()
      self._session = None

  def _get_session(self) -> aiohttp.ClientSession:
    if self._session is None or self._session.closed:
      connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
      self._session = aiohttp.ClientSession(connector=connector)
    return self._session

  def _mark_held(self, address: str, refs: Sequence[str]) -> None:
    held = self._held[address]
    for ref in refs:
      held[ref] = None
      held.move_to_end(ref)
    while len(held) > self._remember:
      held.popitem(last=False)

  def _payload_images(self, address: str, images: list[bytes], refs: list[str],
                      inline: bool) -> list[str]:
    held = self._held[address]
    return [ref if (not inline and ref in held) else base64.b64encode(data).decode("ascii")
            for data, ref in zip(images, refs)]

  async def upload(self, image: Any, address: str | None = None) -> str:
    """Stores an image on one address (default: all) ahead of use; returns its reference."""
    data = _to_bytes(image)
    session = self._get_session()
    for addr in [address] if address else self.addresses:
      async with session.put(f"{addr}/v1/images", data=data,
                             headers={"Content-Type": "application/octet-stream"}) as resp:
        resp.raise_for_status()
        ref = (await resp.json())["ref"]
      self._mark_held(addr, [ref])
    return _ref(data)

  async def execute(self, code: str, images: Sequence[Any] = (), image_index: int = 0,
                    timeout_s: float | None = None) -> ExecResult:
    """Runs `code` on `images` (PNG/JPEG bytes or PIL images, trajectory order)."""
    data = [_to_bytes(im) for im in images]
    refs = [_ref(d) for d in data]
    deadline = time.monotonic() + (self.deadline_s if self.deadline_s is not None else
                                   (timeout_s or 10.0) + 30.0)
    session = self._get_session()
    last_error = "no attempt made"
    inline = False
    attempt = 0
    while attempt <= self.retries:
      address = self.addresses[next(self._next)]
      left = deadline - time.monotonic()
      if left <= 0:
        break
      body = {"code": code, "images": self._payload_images(address, data, refs, inline),
              "image_index": image_index}
      if timeout_s is not None:
        body["timeout_s"] = timeout_s
      wait = self.backoff_s * (2 ** attempt)
      try:
        async with session.post(f"{address}/v1/execute", json=body,
                                timeout=aiohttp.ClientTimeout(total=left)) as resp:
          if resp.status == 200:
            out = await resp.json()
            self._mark_held(address, refs + list(out.get("image_refs", [])))
            return ExecResult(ok=bool(out["ok"]),
                              images=[base64.b64decode(b) for b in out.get("images", [])],
                              stdout=out.get("stdout", ""), error=out.get("error"),
                              ops=out.get("ops", []), duration_ms=out.get("duration_ms", 0.0),
                              address=address, image_refs=list(out.get("image_refs", [])),
                              result_maps=list(out.get("result_maps") or []),
                              notes=list(out.get("notes") or []))
          payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
          if resp.status == 404 and (payload.get("error") or {}).get("type") == "UnknownImage":
            self._held[address].clear()  # that server lost images: send bytes this time
            inline = True
            continue
          if resp.status == 429:
            wait = max(wait, float(payload.get("retry_after_s", wait)))
            last_error = f"{address}: queue full (429)"
          elif resp.status >= 500:
            last_error = f"{address}: HTTP {resp.status}"
          else:  # 4xx: the request itself is wrong; retrying cannot help
            err = payload.get("error") or {}
            raise ValueError(f"executor refused the request: {err.get('message', resp.status)}")
      except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
        last_error = f"{address}: {type(e).__name__}: {e}"
      attempt += 1
      left = deadline - time.monotonic()
      if attempt > self.retries or left <= 0:
        break
      await asyncio.sleep(min(wait, max(left, 0)))
    raise ExecutorUnavailable(f"executor call failed after {attempt} attempt(s): {last_error}")
