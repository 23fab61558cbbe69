"""The HTTP JSON API (aiohttp): /v1/execute, /v1/images, /healthz, /metrics.

The server never decodes images or runs code: it checks requests, resolves image references from
its LRU store, queues the call for a worker (refusing with 429 when the queue is full) and turns
the worker's reply into JSON.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import logging
import math
import time
from typing import Any

from aiohttp import web

from executor.config import Config
from executor.metrics import Metrics
from executor.pool import LAYERS, Pool

log = logging.getLogger("executor")

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class BadRequest(Exception):
  """A request the API refuses (HTTP `status`, error `kind`)."""

  def __init__(self, message: str, status: int = 400, kind: str = "BadRequest"):
    super().__init__(message)
    self.status = status
    self.kind = kind


class ImageStore:
  """Uploaded and produced images by sha256, least recently used dropped beyond `max_bytes`."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self.bytes = 0
    self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()

  def put(self, data: bytes) -> str:
    ref = "sha256:" + hashlib.sha256(data).hexdigest()
    if ref in self._items:
      self._items.move_to_end(ref)
      return ref
    if len(data) > self.max_bytes:
      return ref  # too big to keep; the reference is still returned but will not resolve
    self._items[ref] = data
    self.bytes += len(data)
    while self.bytes > self.max_bytes:
      _, old = self._items.popitem(last=False)
      self.bytes -= len(old)
    return ref

  def get(self, ref: str) -> bytes | None:
    data = self._items.get(ref)
    if data is not None:
      self._items.move_to_end(ref)
    return data

  def __len__(self) -> int:
    return len(self._items)


def _check_image(data: bytes, where: str) -> bytes:
  if not data.startswith(_MAGIC):
    raise BadRequest(f"{where} is not a PNG or JPEG image")
  return data


class Service:
  """The aiohttp application's state: config, worker pool, image store, metrics."""

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.pool = Pool(cfg)
    self.store = ImageStore(cfg.image_cache_mb << 20)
    self.metrics = Metrics()
    self.started = time.time()
    self._mean_latency = 0.05
    self.in_flight = 0  # execute requests accepted and not yet answered
    m = self.metrics
    m.gauge("executor_queue_depth", "Calls waiting for a worker.", lambda: self.pool.waiting)
    m.gauge("executor_in_flight", "Execute requests accepted and not answered yet.", lambda: self.in_flight)
    m.gauge("executor_busy_workers", "Calls running now.", lambda: self.pool.busy)
    m.gauge("executor_workers", "Live worker processes.", lambda: len(self.pool.workers))
    m.gauge("executor_worker_restarts_total", "Workers replaced after a failure.", lambda: self.pool.restarts)
    m.gauge("executor_image_store_bytes", "Bytes held by the image store.", lambda: self.store.bytes)
    m.gauge("executor_image_store_images", "Images held by the image store.", lambda: len(self.store))

  @web.middleware
  async def _json_errors(self, request: web.Request, handler) -> web.StreamResponse:
    """Every error answer is JSON and counted: aiohttp's own (404, 405, 413 for a body over
    --max-request-mb) and anything unexpected (500, logged)."""
    try:
      return await handler(request)
    except web.HTTPException as e:
      if e.status < 400:
        raise
      return self._error(BadRequest(self._http_message(request, e), e.status, e.reason.replace(" ", "")))
    except Exception:  # pylint: disable=broad-except
      log.exception("unexpected error answering %s %s", request.method, request.path)
      return self._error(BadRequest("the service failed to answer this request (see its log)", 500, "InternalError"))

  def _http_message(self, request: web.Request, e: web.HTTPException) -> str:
    if e.status == 413:
      return (
        f"the request body is larger than the service's limit of {self.cfg.max_request_mb} "
        "MB (--max-request-mb): send fewer or smaller images, or upload each image once "
        "with PUT /v1/images and refer to it as 'sha256:<hex>'"
      )
    if e.status == 404:
      return (
        f"no endpoint {request.path}: the service answers POST /v1/execute, "
        "PUT /v1/images, GET /healthz and GET /metrics"
      )
    if e.status == 405:
      return f"{request.path} does not answer {request.method}"
    return e.text or e.reason

  def app(self) -> web.Application:
    app = web.Application(client_max_size=self.cfg.max_request_mb << 20, middlewares=[self._json_errors])
    app.add_routes(
      [
        web.post("/v1/execute", self.execute),
        web.put("/v1/images", self.put_image),
        web.get("/healthz", self.healthz),
        web.get("/metrics", self.render_metrics),
      ]
    )
    app.on_startup.append(self._startup)
    app.on_cleanup.append(self._cleanup)
    return app

  async def _startup(self, _app) -> None:
    await self.pool.start()

  async def _cleanup(self, _app) -> None:
    await self.pool.close()

  def _error(self, e: BadRequest) -> web.Response:
    self.metrics.refuse(e.status, e.kind)
    body = {
      "ok": False,
      "images": [],
      "stdout": "",
      "ops": [],
      "duration_ms": 0.0,
      "error": {"type": e.kind, "message": str(e)},
    }
    headers = {}
    if e.status == 429:
      retry = self._retry_after()
      body["retry_after_s"] = retry
      headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return web.json_response(body, status=e.status, headers=headers)

  def _retry_after(self) -> float:
    """Roughly when a queue slot frees up."""
    return round(max(0.05, self._mean_latency * (self.pool.waiting + 1) / self.cfg.workers), 3)

  def _resolve(self, images: Any) -> list[bytes]:
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
      raise BadRequest("`images` must be a list of strings (base64 PNG/JPEG or 'sha256:<hex>')")
    out = []
    for i, item in enumerate(images):
      if item.startswith("sha256:"):
        data = self.store.get(item)
        if data is None:
          raise BadRequest(
            f"images[{i}] refers to {item}, which this server does not hold; "
            "upload it with PUT /v1/images or send the bytes",
            404,
            "UnknownImage",
          )
        out.append(data)
      else:
        try:
          data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
          raise BadRequest(f"images[{i}] is neither valid base64 nor a sha256: reference") from None
        out.append(_check_image(data, f"images[{i}]"))
        self.store.put(data)  # later calls (e.g. the next turn) may refer to it by sha256
    return out

  def _parse(self, body: Any) -> tuple[dict[str, Any], list[bytes], list[str]]:
    """(the call's header, its input images' bytes, notes to answer with) of a request body."""
    cfg = self.cfg
    if not isinstance(body, dict):
      raise BadRequest("the body must be a JSON object")
    code = body.get("code")
    if not isinstance(code, str):
      raise BadRequest("`code` must be a string")
    if len(code) > cfg.max_code_chars:
      raise BadRequest(f"`code` has {len(code)} characters; the limit is {cfg.max_code_chars}")
    index = body.get("image_index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
      raise BadRequest("`image_index` must be an integer >= 0")
    timeout = body.get("timeout_s")
    if timeout is None:
      timeout = cfg.default_timeout_s
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
      raise BadRequest("`timeout_s` must be a positive number")
    notes = []
    if timeout > cfg.max_timeout_s:
      notes.append(
        f"timeout_s {timeout:g} is above this service's maximum (--max-timeout-s); "
        f"the call ran with {cfg.max_timeout_s:g}"
      )
    timeout = min(float(timeout), cfg.max_timeout_s)
    blobs = self._resolve(body.get("images", []))
    return {"code": code, "image_index": index, "timeout_s": timeout}, blobs, notes

  async def execute(self, request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    # Refuse before reading the body, so at most workers + queue_size request bodies are held.
    if self.in_flight >= self.cfg.workers + self.cfg.queue_size:
      return self._error(
        BadRequest(f"the executor queue is full ({self.cfg.queue_size} calls waiting); retry later", 429, "QueueFull")
      )
    self.in_flight += 1
    try:
      try:
        try:
          body = await request.json()
        except ValueError:
          raise BadRequest("the body is not valid JSON") from None
        header, blobs, notes = self._parse(body)
      except BadRequest as e:
        return self._error(e)
      reply, pngs = await self.pool.run(header, blobs)
    finally:
      self.in_flight -= 1
    seconds = time.perf_counter() - t0
    self._mean_latency = 0.9 * self._mean_latency + 0.1 * seconds
    error = reply.get("error")
    if error and error.get("type") == "InputImageError":  # a bad input, as the magic-byte check
      return self._error(BadRequest(error.get("message", "an input image cannot be decoded"), 400, "InputImageError"))
    self.metrics.observe(seconds, error.get("type", "Error") if error else None)
    return web.json_response(
      {
        "ok": bool(reply.get("ok")),
        "images": [base64.b64encode(p).decode("ascii") for p in pngs],
        "image_refs": [self.store.put(p) for p in pngs],
        "stdout": reply.get("stdout", ""),
        "error": error,
        "ops": reply.get("ops", []),
        "ops_claimed": reply.get("ops_claimed", []),  # the child's own trace: untrusted, unscored
        "result_maps": reply.get("result_maps", [None] * len(pngs)),
        "duration_ms": round(seconds * 1000.0, 3),
        "notes": notes,
      }
    )

  async def put_image(self, request: web.Request) -> web.Response:
    try:
      if request.content_type == "application/json":
        try:
          body = await request.json()
          data = base64.b64decode(body["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
          raise BadRequest('a JSON upload must be {"image": "<base64 PNG/JPEG>"}') from None
      else:
        data = await request.read()
      _check_image(data, "the uploaded body")
    except BadRequest as e:
      return self._error(e)
    return web.json_response({"ref": self.store.put(data), "bytes": len(data)})

  async def healthz(self, _request: web.Request) -> web.Response:
    ok = len(self.pool.workers) > 0
    return web.json_response(
      {
        "ok": ok,
        "workers": len(self.pool.workers),
        "busy": self.pool.busy,
        "queue_depth": self.pool.waiting,
        "uptime_s": round(time.time() - self.started, 1),
        "isolation": self.pool.layers,
        "isolation_details": self.pool.layer_details,
      },
      status=200 if ok else 503,
    )

  async def render_metrics(self, _request: web.Request) -> web.Response:
    return web.Response(
      text=self.metrics.render(), content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"}
    )


def describe_layers(layers: dict[str, bool]) -> list[str]:
  """One log line per isolation layer: active or INACTIVE, and what it means."""
  return [f"  [{'active' if layers.get(name) else 'INACTIVE'}] {name}: {text}" for name, text in LAYERS.items()]
