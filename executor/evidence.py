"""What a call's returned pixels prove: the trusted `ops` and `result_maps`. Runs in the worker.

The child's trace (`executor/trace.py`) is recorded in the process that ran the model's code, so
that code can write anything into it (through `sys.modules`, the garbage collector, patched
libraries, native memory writes, or a forged result frame). Nothing the child reports is evidence
by itself. The worker, which never runs model code, checks each claim against data the code
cannot change after the fact: the call's input images (the request's bytes) and the result
images it returned (the PNGs the model will see).

* A claimed result map (result image k shows input image i under an affine map) is kept when the
  result's pixels are that input sampled through the map: nearly equal (interpolation allowed), or,
  when the trace also claims some non-geometric processing (enhance, filter, draw...), strongly
  correlated. Otherwise the result's map is None.
* A geometric trace entry is kept when a verified result shows it: a crop when its box is, within
  a pixel, the region of its source that a returned image shows; a rotation by a multiple of 90
  degrees, a flip or a transpose when a returned image's map has that orientation; a rotation by
  another angle when a returned image's map rotates by it; a resize when a returned image's map
  scales. An operation whose output was not returned is not shown by any pixels and is dropped.
* The other entries (enhance, filter, draw, ImageOps, cv2, transform) are kept when some returned
  image's pixels are not a plain geometric copy of an input (a verified but changed image, a mode
  change such as RGB to gray, or an image that is no input's copy): the pixels then prove that some
  non-geometric processing happened, though not which one. `numpy` entries (array plumbing such as
  layout changes, which no pixels can show) are kept when the call returned an image, and are never
  scored (`codevision_jax.execution.ops.non_core_ops` skips them).

Everything the child claimed, checked or not, is returned too, as `ops_claimed`: the service
answers it for debugging under that name and nothing scores it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

GEOMETRIC = frozenset({"crop", "rotate", "transpose", "flip", "resize"})
PLUMBING = frozenset({"numpy", "truncated"})
MAX_SAMPLES = 192  # result pixels compared per axis (a grid of at most 192 x 192 points)
EXACT_MEAN_ABS = 3.0  # mean |difference| (0-255) under which a result is the input's geometric copy
SIMILAR_CORR = 0.9  # correlation above which a processed result still shows the mapped input
MIN_INSIDE = 0.25  # share of sampled points whose source lies inside the input
BOX_TOLERANCE = 1.0  # pixels

# Output -> input linear parts of the orientations (signs only), as PIL's Transpose names them.
_ORIENTATIONS = {
  (1, 0, 0, 1): "IDENTITY",
  (-1, 0, 0, 1): "FLIP_LEFT_RIGHT",
  (1, 0, 0, -1): "FLIP_TOP_BOTTOM",
  (0, -1, 1, 0): "ROTATE_90",
  (-1, 0, 0, -1): "ROTATE_180",
  (0, 1, -1, 0): "ROTATE_270",
  (0, 1, 1, 0): "TRANSPOSE",
  (0, -1, -1, 0): "TRANSVERSE",
}
_ROTATION_NAMES = {0: "IDENTITY", 90: "ROTATE_90", 180: "ROTATE_180", 270: "ROTATE_270"}
_FLIP_NAMES = {"horizontal": "FLIP_LEFT_RIGHT", "vertical": "FLIP_TOP_BOTTOM", "both": "ROTATE_180"}


@dataclasses.dataclass(frozen=True)
class Shown:
  """What one verified result image shows of its source input."""

  source: int
  region: tuple[float, float, float, float]  # the source pixels it shows, [x1, y1, x2, y2]
  orientation: str | None  # a Transpose name (or IDENTITY) when the map is axis-aligned
  angle: float | None  # counter-clockwise degrees when the map is a rotation (any angle)
  scaled: bool
  changed: bool  # pixels differ from the plain geometric copy (processing, or a mode change)


def _decode(data: bytes) -> Image.Image | None:
  try:
    im = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    im.load()
    return im
  except Exception:  # pylint: disable=broad-except
    return None


def _gray(rgb: np.ndarray) -> np.ndarray:
  """ITU-R 601 luma, as PIL's convert("L")."""
  return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _as_values(im: Image.Image) -> tuple[np.ndarray, bool]:
  """A float array HxWxC of the result (C = 1 for gray modes) and whether it is gray."""
  if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
    arr = np.asarray(im.convert("L"), dtype=np.float64)
    return arr[..., None], True
  return np.asarray(im.convert("RGB"), dtype=np.float64), False


def _orientation(m: Sequence[float]) -> str | None:
  a, b, _, d, e, _ = m
  scale = max(abs(a), abs(b), abs(d), abs(e))
  if scale <= 0:
    return None
  tol = 1e-6 * scale
  if abs(b) <= tol and abs(d) <= tol and abs(a) > tol and abs(e) > tol:
    key = (int(math.copysign(1, a)), 0, 0, int(math.copysign(1, e)))
  elif abs(a) <= tol and abs(e) <= tol and abs(b) > tol and abs(d) > tol:
    key = (0, int(math.copysign(1, b)), int(math.copysign(1, d)), 0)
  else:
    return None
  return _ORIENTATIONS[key]


def _rotation_angle(m: Sequence[float]) -> float | None:
  """Counter-clockwise degrees (as PIL's Image.rotate) of a map that is a scaled rotation."""
  a, b, _, d, e, _ = m
  s = math.hypot(a, b)
  if s <= 0 or abs(a - e) > 1e-6 * s or abs(b + d) > 1e-6 * s:
    return None
  return (-math.degrees(math.atan2(b, a))) % 360.0


def _region(m: Sequence[float], w: int, h: int, size: tuple[int, int]) -> tuple[float, ...]:
  a, b, c, d, e, f = m
  xs = [a * x + b * y + c for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
  ys = [d * x + e * y + f for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
  sw, sh = size
  return (min(max(min(xs), 0), sw), min(max(min(ys), 0), sh), min(max(max(xs), 0), sw), min(max(max(ys), 0), sh))


def compare(result: Image.Image, source: Image.Image, m: Sequence[float]) -> tuple[str | None, bool]:
  """How `result` relates to `source` seen through map `m` (result pixel-edge coordinates to
  source ones): ("exact" | "similar" | None, whether the result is gray)."""
  values, gray = _as_values(result)
  h, w = values.shape[:2]
  if w == 0 or h == 0:
    return None, gray
  ys = np.unique(np.linspace(0, h - 1, min(h, MAX_SAMPLES)).astype(np.int64))
  xs = np.unique(np.linspace(0, w - 1, min(w, MAX_SAMPLES)).astype(np.int64))
  py, px = np.meshgrid(ys + 0.5, xs + 0.5, indexing="ij")
  a, b, c, d, e, f = m
  sx = np.floor(a * px + b * py + c)
  sy = np.floor(d * px + e * py + f)
  sw, sh = source.size
  inside = (sx >= 0) & (sx < sw) & (sy >= 0) & (sy < sh)
  if inside.mean() < MIN_INSIDE:
    return None, gray
  src = np.asarray(source.convert("RGB"))
  ref = src[sy[inside].astype(np.int64), sx[inside].astype(np.int64)].astype(np.float64)
  got = values[np.meshgrid(ys, xs, indexing="ij")][inside]
  if gray:
    ref = _gray(ref)[:, None]
  if np.abs(got - ref).mean() <= EXACT_MEAN_ABS:
    return "exact", gray
  g, r = got - got.mean(0), ref - ref.mean(0)
  denom = math.sqrt(float((g * g).sum()) * float((r * r).sum()))
  if denom > 0 and float((g * r).sum()) / denom >= SIMILAR_CORR:
    return "similar", gray
  return None, gray


def _valid_map(m: Any) -> bool:
  return (
    isinstance(m, dict)
    and isinstance(m.get("source"), int)
    and isinstance(m.get("map"), list)
    and len(m["map"]) == 6
    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in m["map"])
  )


def _entry_orientation(op: dict[str, Any]) -> str | None:
  kind = op.get("op")
  if kind == "transpose":
    return op.get("method") if isinstance(op.get("method"), str) else None
  if kind == "flip":
    return _FLIP_NAMES.get(op.get("direction"))
  if kind == "rotate":
    try:
      angle = float(op.get("angle")) % 360.0
    except (TypeError, ValueError):
      return None
    for deg, name in _ROTATION_NAMES.items():
      if abs(angle - deg) < 1e-6 or abs(angle - deg - 360) < 1e-6:
        return name
  return None


def _box_equal(box: Any, region: Sequence[float]) -> bool:
  try:
    return len(box) == 4 and all(abs(float(u) - v) <= BOX_TOLERANCE for u, v in zip(box, region))
  except (TypeError, ValueError):
    return False


def _geometry_shown(op: dict[str, Any], shown: list[Shown]) -> bool:
  kind = op.get("op")
  if kind == "crop":
    return any(s.source == op.get("source") and _box_equal(op.get("box"), s.region) for s in shown)
  if kind == "resize":
    return any(s.scaled for s in shown)
  orientation = _entry_orientation(op)
  if orientation is not None:
    return any(s.orientation == orientation for s in shown)
  if kind == "rotate":
    try:
      angle = float(op.get("angle")) % 360.0
    except (TypeError, ValueError):
      return False
    return any(s.angle is not None and min(abs(s.angle - angle), 360 - abs(s.angle - angle)) < 0.5 for s in shown)
  return False


def verify(
  claimed_ops: list[dict[str, Any]], claimed_maps: list[Any], results: list[bytes], inputs: list[bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any] | None]]:
  """The trusted (ops, result_maps) of one call: the claims its returned pixels prove.

  `claimed_ops` / `claimed_maps` are what the child reported (untrusted), `results` the result
  PNGs, `inputs` the request's input image bytes. See the module docstring for the rules.
  """
  photometric_claimed = any(isinstance(op, dict) and op.get("op") not in GEOMETRIC | PLUMBING for op in claimed_ops)
  decoded_inputs: dict[int, Image.Image | None] = {}

  def source(i: int) -> Image.Image | None:
    if i not in decoded_inputs:
      decoded_inputs[i] = _decode(inputs[i]) if 0 <= i < len(inputs) else None
    return decoded_inputs[i]

  maps: list[dict[str, Any] | None] = []
  shown: list[Shown] = []
  unexplained = False  # a returned image that is no input's plain geometric copy
  for k, data in enumerate(results):
    claimed = claimed_maps[k] if k < len(claimed_maps) else None
    result = _decode(data)
    verdict, gray, src = None, False, None
    if result is not None and _valid_map(claimed):
      src = source(claimed["source"])
      if src is not None:
        verdict, gray = compare(result, src, claimed["map"])
        if verdict == "similar" and not photometric_claimed:
          verdict = None
    if verdict is None:
      maps.append(None)
      if result is not None and not any(
        inp is not None and _same_pixels(result, inp) for inp in (source(i) for i in range(len(inputs)))
      ):
        unexplained = True
      continue
    m = [float(v) for v in claimed["map"]]
    maps.append({"source": claimed["source"], "map": m})
    a, b, _, d, e, _ = m
    shown.append(
      Shown(
        source=claimed["source"],
        region=_region(m, result.width, result.height, src.size),
        orientation=_orientation(m),
        angle=_rotation_angle(m),
        scaled=abs(math.hypot(a, d) - 1) > 1e-3 or abs(math.hypot(b, e) - 1) > 1e-3,
        changed=verdict == "similar" or gray,
      )
    )
  processed = unexplained or any(s.changed for s in shown)
  ops = []
  for op in claimed_ops:
    if not isinstance(op, dict):
      continue
    kind = op.get("op")
    if kind in GEOMETRIC:
      keep = _geometry_shown(op, shown)
    elif kind in PLUMBING:
      keep = bool(results)
    else:
      keep = processed
    if keep:
      ops.append(op)
  return ops, maps


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
  if a.size != b.size:
    return False
  va, _ = _as_values(a)
  vb, _ = _as_values(b)
  return va.shape == vb.shape and np.array_equal(va, vb)
