"""Asyncio client for the executor service (executor/, docs/executor.md).

One `ExecutorClient` holds a pooled aiohttp session to a fleet of one or more service addresses
and spreads calls over them round robin. Each call has a deadline covering all its attempts;
transport errors, timeouts, 5xx answers and 429 (queue full) are retried on another address, code
errors never (they are answers: `ExecResult.ok` is False and `error_text()` is what the model
should see).

An address that fails (a transport error, a timeout or a 5xx; `eject_after` in a row) is taken
out of rotation: a background task probes it on `GET /healthz` every `probe_interval_s` and puts
it back when it answers ok. When every address is out, calls wait for one to come back until
their deadline, then raise `ExecutorUnavailable` naming each address and its last failure.
`client.stats` counts what happened (answers and requests per address, retries, ejections,
readmissions).

Images are sent once per address: the client remembers which images (by sha256) each address
holds, inputs it sent inline and results it returned, and sends `sha256:` references instead of
the bytes afterwards. When a server has dropped an image from its store, the call is resent with
the bytes; an address taken out of rotation is assumed to have lost them all (it may come back
restarted).

  async with ExecutorClient(["http://10.0.0.5:8700", "http://10.0.0.6:8700"]) as client:
    res = await client.execute("result = image.rotate(90, expand=True)", [png_bytes])
    res.images  # PNG bytes; res.ops: what the code did; res.stdout
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import hashlib
import io
import logging
import time
from typing import Any, Sequence

import aiohttp

from codevision_jax.processing import png

log = logging.getLogger(__name__)

# What an attempt may raise when the address did not answer properly (retried elsewhere).
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError)


class ExecutorUnavailable(Exception):
  """No address answered within the deadline (transport errors, 5xx or 429 on every attempt, or
  every address out of rotation)."""


def _describe(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def _health(session: aiohttp.ClientSession, address: str, timeout_s: float) -> str | None:
  """None when `address` answers GET /healthz with ok true; else what went wrong."""
  try:
    async with session.get(f"{address}/healthz", timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
      body = await resp.json(content_type=None)
      if resp.status == 200 and isinstance(body, dict) and body.get("ok"):
        return None
      return f"answered HTTP {resp.status}: {body}"
  except _TRANSPORT_ERRORS as e:
    return _describe(e)


async def healthy_services(
  addresses: Sequence[str], *, timeout_s: float = 10.0, setting: str = "--config.executor.urls"
) -> list[str]:
  """The addresses whose GET /healthz answers ok (a warning names the others); raises
  ExecutorUnavailable naming every address and its failure when none does, and `setting`: the
  flag or config field of the command that takes the URLs."""
  addresses = [a.rstrip("/") for a in addresses]
  async with aiohttp.ClientSession() as session:
    problems = await asyncio.gather(*(_health(session, a, timeout_s) for a in addresses))
  good = [a for a, p in zip(addresses, problems) if p is None]
  bad = [f"  {a}: {p}" for a, p in zip(addresses, problems) if p is not None]
  if not good:
    raise ExecutorUnavailable(
      "no executor service answers /healthz:\n" + "\n".join(bad) + "\nStart one with "
      f"`python -m executor --port 8700` (see docs/executor.md) and pass its URL in {setting}, "
      f"or leave {setting} unset to start a local service for the run"
    )
  if bad:
    logging.warning("executor services that do not answer /healthz are left out:\n%s", "\n".join(bad))
  return good


@dataclasses.dataclass
class ExecResult:
  """One executed call."""

  ok: bool
  images: list[bytes]  # result images, PNG bytes
  stdout: str
  error: dict[str, Any] | None  # {"type", "message", "line"} when ok is False
  ops: list[dict[str, Any]]  # the runtime trace (codevision_jax/execution/ops.py)
  duration_ms: float  # server-side time for the call
  address: str  # which service answered
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


@dataclasses.dataclass
class FleetStats:
  """What a client did since it was made; per-address counters are keyed by address.

  Every `execute` that returns has exactly one answer, so `sum(answers.values())` is the number
  of calls that returned (a retried call is counted once, where it was answered)."""

  calls: int = 0  # execute() calls started
  answers: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  requests: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  queue_full: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # 429
  retries: int = 0  # attempts after a call's first (after a failure or a 429)
  ejections: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  readmissions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  waits: int = 0  # calls that waited because every address was out of rotation
  unavailable: int = 0  # calls that raised ExecutorUnavailable

  def summary(self) -> str:
    """One line for the logs."""
    answers = ", ".join(f"{a} {n}" for a, n in sorted(self.answers.items())) or "none"
    return (
      f"{self.calls} calls, answers per address: {answers}; {self.retries} retries, "
      f"{sum(self.ejections.values())} ejections, "
      f"{sum(self.readmissions.values())} readmissions, {self.unavailable} unavailable"
    )


@dataclasses.dataclass
class _Out:
  """An address out of rotation."""

  since: float  # time.monotonic() of the ejection
  reason: str  # the failure that took it out
  probe: str = "not probed yet"  # the latest /healthz failure


def _ref(data: bytes) -> str:
  return "sha256:" + hashlib.sha256(data).hexdigest()


def _to_bytes(image: Any) -> bytes:
  if isinstance(image, (bytes, bytearray, memoryview)):
    return bytes(image)
  if hasattr(image, "save"):  # a PIL image
    return png.encode(image)
  raise TypeError(f"an image must be PNG/JPEG bytes or a PIL image, not {type(image).__name__}")


def _error_type(payload: dict[str, Any]) -> str:
  return (payload.get("error") or {}).get("type", "") if isinstance(payload, dict) else ""


class ExecutorClient:
  """Pooled, retrying, round-robin client of a fleet of services, taking addresses that fail out
  of rotation until their /healthz answers again. Use as `async with`, or call `close()`."""

  def __init__(
    self,
    addresses: str | Sequence[str],
    *,
    max_connections: int = 64,
    deadline_s: float | None = None,
    retries: int = 4,
    backoff_s: float = 0.05,
    remember_images: int = 4096,
    eject_after: int = 1,
    probe_interval_s: float = 2.0,
    probe_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0,
    setting: str = "--config.executor.urls",
  ):
    """`deadline_s` (per call, all attempts) defaults to the call's timeout + 30 s. An address
    is taken out of rotation after `eject_after` failures in a row (transport errors, timeouts,
    5xx) and probed on /healthz every `probe_interval_s` until it answers ok within
    `probe_timeout_s`. `connect_timeout_s` bounds opening a connection. `setting`: the flag or
    config field that lists the services, as errors name it."""
    self.setting = setting
    self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
    if not self.addresses:
      raise ValueError("ExecutorClient needs at least one address")
    self.addresses = list(dict.fromkeys(a.rstrip("/") for a in self.addresses))  # once each
    if eject_after < 1 or probe_interval_s <= 0:
      raise ValueError("eject_after must be >= 1 and probe_interval_s > 0")
    self.deadline_s = deadline_s
    self.retries = retries
    self.backoff_s = backoff_s
    self.eject_after = eject_after
    self.probe_interval_s = probe_interval_s
    self.probe_timeout_s = probe_timeout_s
    self.connect_timeout_s = connect_timeout_s
    self.stats = FleetStats()
    self._max_connections = max_connections
    self._cursor = 0  # the next address in the round robin
    self._session: aiohttp.ClientSession | None = None
    self._remember = remember_images
    self._held: dict[str, collections.OrderedDict[str, None]] = {a: collections.OrderedDict() for a in self.addresses}
    self._out: dict[str, _Out] = {}
    self._in_a_row: collections.Counter[str] = collections.Counter()
    self._last_failure: dict[str, str] = {}
    self._probe_task: asyncio.Task | None = None
    self._waiters: set[asyncio.Future] = set()  # calls waiting for an address to come back

  async def __aenter__(self) -> "ExecutorClient":
    self._start_probe()
    return self

  async def __aexit__(self, *exc) -> None:
    await self.close()

  async def close(self) -> None:
    """Stops the health probe and closes the connections."""
    task, self._probe_task = self._probe_task, None
    if task is not None and not task.done():
      task.cancel()
      if task.get_loop() is asyncio.get_running_loop():
        with contextlib.suppress(asyncio.CancelledError):
          await task
    if self.stats.retries or self.stats.ejections:
      log.info("executor client: %s", self.stats.summary())
    if self._session is not None:
      await self._session.close()
      self._session = None

  def _get_session(self) -> aiohttp.ClientSession:
    if self._session is None or self._session.closed:
      connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
      self._session = aiohttp.ClientSession(connector=connector)
    return self._session

  # Rotation: which addresses take calls, ejection, readmission.

  @property
  def in_rotation(self) -> list[str]:
    """The addresses that take calls now."""
    return [a for a in self.addresses if a not in self._out]

  @property
  def out_of_rotation(self) -> dict[str, str]:
    """Address -> why it is out, for the addresses that do not take calls now."""
    return {a: out.reason for a, out in self._out.items()}

  def _pick(self, tried: set[str]) -> str | None:
    """The next address in rotation, round robin, preferring one this call has not tried; None
    when every address is out."""
    n = len(self.addresses)
    fallback = None
    for k in range(n):
      i = (self._cursor + k) % n
      address = self.addresses[i]
      if address in self._out:
        continue
      if address not in tried:
        self._cursor = (i + 1) % n
        return address
      if fallback is None:
        fallback = i
    if fallback is None:
      return None
    self._cursor = (fallback + 1) % n
    return self.addresses[fallback]

  def _answered(self, address: str) -> None:
    self.stats.answers[address] += 1
    self._in_a_row[address] = 0

  def _failed(self, address: str, failure: str) -> None:
    """Counts a failed attempt; takes the address out after `eject_after` in a row."""
    self.stats.failures[address] += 1
    self._last_failure[address] = failure
    self._in_a_row[address] += 1
    if address not in self._out and self._in_a_row[address] >= self.eject_after:
      self._eject(address, failure)

  def _eject(self, address: str, reason: str) -> None:
    self._out[address] = _Out(since=time.monotonic(), reason=reason)
    self._held[address].clear()  # it may come back restarted, with an empty image store
    self.stats.ejections[address] += 1
    log.warning(
      "executor %s taken out of rotation (%s); %d of %d address(es) left in rotation; probing %s/healthz every %g s",
      address,
      reason,
      len(self.in_rotation),
      len(self.addresses),
      address,
      self.probe_interval_s,
    )
    self._start_probe()

  def _readmit(self, address: str) -> None:
    out = self._out.pop(address)
    self._in_a_row[address] = 0
    self._held[address].clear()
    self.stats.readmissions[address] += 1
    log.info(
      "executor %s back in rotation after %.1f s out (%d of %d address(es) in rotation)",
      address,
      time.monotonic() - out.since,
      len(self.in_rotation),
      len(self.addresses),
    )
    for waiter in self._waiters:
      if not waiter.done():
        waiter.set_result(address)

  async def probe(self) -> list[str]:
    """Probes every address out of rotation once on /healthz; puts back those that answer ok
    and returns them. The background task calls this every `probe_interval_s`."""
    out = list(self._out)
    if not out:
      return []
    session = self._get_session()
    problems = await asyncio.gather(*(_health(session, a, self.probe_timeout_s) for a in out))
    back = []
    for address, problem in zip(out, problems):
      if address not in self._out:
        continue
      if problem is None:
        self._readmit(address)
        back.append(address)
      else:
        self._out[address].probe = problem
    return back

  async def _probe_loop(self) -> None:
    while True:
      await asyncio.sleep(self.probe_interval_s)
      try:
        await self.probe()
      except Exception:  # pylint: disable=broad-except
        log.exception("the executor health probe failed; it tries again in %g s", self.probe_interval_s)

  def _start_probe(self) -> None:
    if self._probe_task is None or self._probe_task.done():
      self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

  async def _wait_for_rotation(self, deadline: float) -> bool:
    """Waits until an address is back in rotation (True) or the deadline passes (False)."""
    while not self.in_rotation:
      left = deadline - time.monotonic()
      if left <= 0:
        return False
      waiter = asyncio.get_running_loop().create_future()
      self._waiters.add(waiter)
      try:
        await asyncio.wait_for(waiter, left)
      except asyncio.TimeoutError:
        return False
      finally:
        self._waiters.discard(waiter)
    return True

  def _fleet_report(self) -> str:
    """One line per address: in rotation or out, and its last failure."""
    now = time.monotonic()
    lines = []
    for address in self.addresses:
      out = self._out.get(address)
      if out is not None:
        lines.append(
          f"  {address}: out of rotation for {now - out.since:.1f} s after {out.reason}; last /healthz: {out.probe}"
        )
      else:
        last = self._last_failure.get(address)
        lines.append(f"  {address}: in rotation" + (f", last failure: {last}" if last else ""))
    return "\n".join(lines)

  # Images.

  def _mark_held(self, address: str, refs: Sequence[str]) -> None:
    held = self._held[address]
    for ref in refs:
      held[ref] = None
      held.move_to_end(ref)
    while len(held) > self._remember:
      held.popitem(last=False)

  def _payload_images(self, address: str, images: list[bytes], refs: list[str], inline: bool) -> list[str]:
    held = self._held[address]
    return [
      ref if (not inline and ref in held) else base64.b64encode(data).decode("ascii") for data, ref in zip(images, refs)
    ]

  async def upload(self, image: Any, address: str | None = None) -> str:
    """Stores an image on one address (default: all in rotation) ahead of use; returns its
    reference."""
    data = _to_bytes(image)
    ref = _ref(data)
    session = self._get_session()
    for addr in [address] if address else self.in_rotation:
      async with session.put(
        f"{addr}/v1/images", data=data, headers={"Content-Type": "application/octet-stream"}
      ) as resp:
        resp.raise_for_status()
        await resp.json()
      self._mark_held(addr, [ref])
    return ref

  # Calls.

  async def _post(self, address: str, body: dict[str, Any], left: float) -> tuple[int, dict[str, Any]]:
    """One POST /v1/execute: the HTTP status and the JSON answer ({} when an error answer is not
    JSON, e.g. a proxy's 502 page)."""
    self.stats.requests[address] += 1
    timeout = aiohttp.ClientTimeout(total=left, sock_connect=min(left, self.connect_timeout_s))
    async with self._get_session().post(f"{address}/v1/execute", json=body, timeout=timeout) as resp:
      if resp.status == 200:
        return 200, await resp.json()
      try:
        payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
      except ValueError:
        payload = {}
      return resp.status, payload if isinstance(payload, dict) else {}

  def _result(self, address: str, refs: list[str], out: dict[str, Any]) -> ExecResult:
    self._mark_held(address, refs + list(out.get("image_refs", [])))
    return ExecResult(
      ok=bool(out["ok"]),
      images=[base64.b64decode(b) for b in out.get("images", [])],
      stdout=out.get("stdout", ""),
      error=out.get("error"),
      ops=out.get("ops", []),
      duration_ms=out.get("duration_ms", 0.0),
      address=address,
      image_refs=list(out.get("image_refs", [])),
      result_maps=list(out.get("result_maps") or []),
      notes=list(out.get("notes") or []),
    )

  def _refused(self, address: str, status: int, out: dict[str, Any], wait: float) -> tuple[str, float]:
    """An error answer other than UnknownImage: what went wrong and how long to wait before the
    next attempt; raises ValueError for a 4xx, which no retry can help."""
    if status == 429:
      self.stats.queue_full[address] += 1
      self._in_a_row[address] = 0  # it answers: busy, not broken
      return f"{address}: queue full (429)", max(wait, float(out.get("retry_after_s", wait)))
    if status >= 500:
      self._failed(address, f"HTTP {status} {_error_type(out)}".strip())
      return f"{address}: HTTP {status}", wait
    err = out.get("error") or {}
    raise ValueError(f"executor {address} refused the request (HTTP {status}): {err.get('message', 'no message')}")

  async def execute(
    self, code: str, images: Sequence[Any] = (), image_index: int = 0, timeout_s: float | None = None
  ) -> ExecResult:
    """Runs `code` on `images` (PNG/JPEG bytes or PIL images, trajectory order) on one address
    of the fleet; returns its one answer."""
    data = [_to_bytes(im) for im in images]
    refs = [_ref(d) for d in data]
    deadline = time.monotonic() + (self.deadline_s if self.deadline_s is not None else (timeout_s or 10.0) + 30.0)
    self.stats.calls += 1
    tried: set[str] = set()
    last_error = "no attempt made"
    inline = waited = retrying = False
    resend_to = None  # an address that answered UnknownImage: it gets the bytes
    attempt = 0
    while attempt <= self.retries:
      address, resend_to = resend_to or self._pick(tried), None
      if address is None:  # every address is out: wait for the probe to put one back
        if not waited:
          self.stats.waits += 1
          waited = True
        if not await self._wait_for_rotation(deadline):
          break
        continue
      left = deadline - time.monotonic()
      if left <= 0:
        break
      tried.add(address)
      self.stats.retries += retrying
      retrying = False
      body = {"code": code, "images": self._payload_images(address, data, refs, inline), "image_index": image_index}
      if timeout_s is not None:
        body["timeout_s"] = timeout_s
      wait = self.backoff_s * (2**attempt)
      try:
        status, out = await self._post(address, body, left)
      except _TRANSPORT_ERRORS as e:
        last_error = f"{address}: {_describe(e)}"
        self._failed(address, _describe(e))
      else:
        if status == 200:
          self._answered(address)
          return self._result(address, refs, out)
        if status == 404 and _error_type(out) == "UnknownImage":
          self._held[address].clear()  # that server lost images: send it the bytes
          inline, resend_to = True, address
          continue
        last_error, wait = self._refused(address, status, out, wait)
      attempt += 1
      left = deadline - time.monotonic()
      if attempt > self.retries or left <= 0:
        break
      retrying = True
      await asyncio.sleep(min(wait, left))
    self.stats.unavailable += 1
    raise ExecutorUnavailable(
      f"executor call failed after {attempt} attempt(s) (last: {last_error}); the fleet:\n"
      f"{self._fleet_report()}\nCheck that the services run (`curl <address>/healthz`, "
      f"docs/executor.md) and are listed in {self.setting}"
    )
