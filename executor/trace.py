"""Runtime trace of what the model's code does to the images: the child's *claim* (`ops_claimed`
in the API answer). It runs in the process of the model's code, which can write anything into it;
the worker keeps only what the returned pixels prove as `ops` and `result_maps`
(`executor/evidence.py`).

`install()` wraps the PIL, numpy and cv2 entry points once per worker, before any fork; the wrapped
functions append to `OPS` in the per-call child only (the worker never runs model code, so its
`OPS` stays empty and every child starts from an empty trace).

Geometry is tracked with an affine map from each image's (or array's) pixel-edge coordinates to
the coordinates of the input image it came from, so a crop is reported with its box in the
original image's pixels even after earlier crops, resizes, rotations and flips. PIL images carry
the map as an attribute; arrays are tracked by id (with a weak reference), and views made by
slicing (`a[y1:y2, x1:x2]`, `a[:, ::-1]`) are recognised where they reach PIL, cv2, numpy or the
result, from their data pointer and strides.

Only the outermost call is recorded (a PIL method that calls other PIL methods is one op). Tracing
never changes what the code computes; a failure inside the tracer is ignored.

The entries and their mapping to CodeVision's core operations are described in
`codevision_jax/execution/ops.py`; rotation angles are counter-clockwise, as PIL's.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

MAX_OPS = 256

OPS: list[dict[str, Any]] = []  # the trace of the current call (child only)
_state = {"depth": 0, "via": None}
_arrays: dict[int, tuple[weakref.ref, tuple]] = {}  # id(array) -> (ref, mapping)
_seen_views: set[tuple] = set()
_source_sizes: dict[int, tuple[int, int]] = {}

# A mapping is (source_index, (a, b, c, d, e, f)): original x = a*x + b*y + c, y = d*x + e*y + f.
Affine = tuple[float, float, float, float, float, float]
_IDENTITY: Affine = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _compose(m: Affine, n: Affine) -> Affine:
  """m after n: p -> m(n(p))."""
  a, b, c, d, e, f = m
  g, h, i, j, k, l = n
  return (a * g + b * j, a * h + b * k, a * i + b * l + c, d * g + e * j, d * h + e * k, d * i + e * l + f)


def _then(mapping, local: Affine):
  """The mapping of an output whose coordinates map into the input's by `local`."""
  if mapping is None:
    return None
  return (mapping[0], _compose(mapping[1], local))


def _num(v: float) -> float | int:
  r = round(float(v), 2)
  return int(r) if r == int(r) else r


def _map_box(mapping, box) -> tuple[int | None, list]:
  if mapping is None:
    return None, [_num(v) for v in box]
  src, (a, b, c, d, e, f) = mapping
  x1, y1, x2, y2 = (float(v) for v in box)
  xs, ys = [], []
  for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)):
    xs.append(a * x + b * y + c)
    ys.append(d * x + e * y + f)
  w, h = _source_sizes.get(src, (math.inf, math.inf))
  out = [min(max(min(xs), 0), w), min(max(min(ys), 0), h), min(max(max(xs), 0), w), min(max(max(ys), 0), h)]
  return src, [_num(v) for v in out]


def _record(entry: dict[str, Any]) -> None:
  if len(OPS) < MAX_OPS:
    if _state["via"] is not None:
      entry["fn"] = _state["via"]
    OPS.append(entry)
  elif len(OPS) == MAX_OPS:
    OPS.append({"op": "truncated", "reason": f"more than {MAX_OPS} operations"})


def _record_crop(mapping, box, fn: str) -> None:
  src, mapped = _map_box(mapping, box)
  _record({"op": "crop", "box": mapped, "source": src, "fn": fn})


# Local maps (output pixel-edge coordinates -> input coordinates) of the transpose methods; w, h
# are the input size.
def _transpose_local(method: int, w: float, h: float) -> Affine | None:
  t = Image.Transpose
  return {
    t.FLIP_LEFT_RIGHT: (-1.0, 0.0, w, 0.0, 1.0, 0.0),
    t.FLIP_TOP_BOTTOM: (1.0, 0.0, 0.0, 0.0, -1.0, h),
    t.ROTATE_90: (0.0, -1.0, w, 1.0, 0.0, 0.0),
    t.ROTATE_180: (-1.0, 0.0, w, 0.0, -1.0, h),
    t.ROTATE_270: (0.0, 1.0, 0.0, -1.0, 0.0, h),
    t.TRANSPOSE: (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    t.TRANSVERSE: (0.0, -1.0, w, -1.0, 0.0, h),
  }.get(method)


def _rotate_local(angle: float, w: int, h: int, expand: bool, center, translate) -> Affine:
  """The output->input matrix PIL's Image.rotate builds (same arithmetic)."""
  post = translate or (0, 0)
  cx, cy = center if center is not None else (w / 2, h / 2)
  r = -math.radians(angle % 360.0)
  a, b, d, e = (round(math.cos(r), 15), round(math.sin(r), 15), round(-math.sin(r), 15), round(math.cos(r), 15))
  tx, ty = -cx - post[0], -cy - post[1]
  c, f = a * tx + b * ty + cx, d * tx + e * ty + cy
  if expand:
    xs, ys = [], []
    for x, y in ((0, 0), (w, 0), (w, h), (0, h)):
      xs.append(a * x + b * y + c)
      ys.append(d * x + e * y + f)
    nw = math.ceil(max(xs)) - math.floor(min(xs))
    nh = math.ceil(max(ys)) - math.floor(min(ys))
    x0, y0 = -(nw - w) / 2.0, -(nh - h) / 2.0
    c, f = a * x0 + b * y0 + c, d * x0 + e * y0 + f
  return (a, b, c, d, e, f)


def _scale_local(w_in: float, h_in: float, w_out: float, h_out: float, x0=0.0, y0=0.0) -> Affine:
  return (w_in / max(w_out, 1), 0.0, x0, 0.0, h_in / max(h_out, 1), y0)


# ---- images and arrays -------------------------------------------------------------------------


def _img_map(im):
  return getattr(im, "_cv_map", None)


def _set_img_map(im, mapping) -> None:
  if isinstance(im, Image.Image) and mapping is not None:
    try:
      im._cv_map = mapping  # pylint: disable=protected-access
    except AttributeError:
      pass


def _register_array(arr, mapping) -> None:
  if isinstance(arr, np.ndarray) and arr.ndim >= 2 and mapping is not None:
    key = id(arr)
    try:
      ref = weakref.ref(arr, lambda _r, k=key: _arrays.pop(k, None))
    except TypeError:
      return
    _arrays[key] = (ref, mapping)


def _tracked(arr):
  entry = _arrays.get(id(arr))
  if entry is not None and entry[0]() is arr:
    return entry[1]
  return None


def _array_map(arr, fn: str):
  """The mapping of an array; for a strided view of a tracked array, records its crop/flip."""
  if not isinstance(arr, np.ndarray) or arr.ndim < 2:
    return None
  mapping = _tracked(arr)
  if mapping is not None:
    return mapping
  base = arr.base
  while isinstance(base, np.ndarray):
    bmap = _tracked(base)
    if bmap is not None:
      mapping = _view_map(arr, base, bmap, fn)
      _register_array(arr, mapping)
      return mapping
    base = base.base
  return None


def _view_map(arr, base, bmap, fn: str):
  s0, s1 = base.strides[0], base.strides[1]
  if s0 <= 0 or s1 <= 0 or arr.strides[0] % s0 or arr.strides[1] % s1:
    return None
  sy, sx = arr.strides[0] // s0, arr.strides[1] // s1
  if sx == 0 or sy == 0:
    return None
  off = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
  r0, rem = divmod(off, s0)
  c0 = rem // s1
  h, w = arr.shape[0], arr.shape[1]
  local = (float(sx), 0.0, float(c0 if sx > 0 else c0 + 1), 0.0, float(sy), float(r0 if sy > 0 else r0 + 1))
  key = (id(base), off, arr.shape[:2], arr.strides[:2])
  if key not in _seen_views:
    _seen_views.add(key)
    xs = sorted((local[2], local[2] + sx * w))
    ys = sorted((local[5], local[5] + sy * h))
    box = [xs[0], ys[0], xs[1], ys[1]]
    if box != [0, 0, base.shape[1], base.shape[0]]:
      _record_crop(bmap, box, fn + " (array slice)")
    if sx < 0 or sy < 0:
      direction = "both" if sx < 0 and sy < 0 else ("horizontal" if sx < 0 else "vertical")
      _record({"op": "flip", "direction": direction, "fn": fn + " (array slice)"})
    if abs(sx) > 1 or abs(sy) > 1:
      _record({"op": "resize", "size": [int(w), int(h)], "fn": fn + " (array slice)"})
  return _then(bmap, local)


def _any_map(obj, fn: str):
  if isinstance(obj, Image.Image):
    return _img_map(obj)
  return _array_map(obj, fn)


def start(images: list) -> None:
  """Marks the call's input images as the origins of the coordinate maps."""
  for i, im in enumerate(images):
    _source_sizes[i] = im.size
    _set_img_map(im, (i, _IDENTITY))


def reset() -> None:
  """Forgets everything recorded so far and records again."""
  OPS.clear()
  _arrays.clear()
  _seen_views.clear()
  _source_sizes.clear()
  _state["depth"] = 0
  _state["via"] = None


def stop() -> None:
  """Stops recording: what the service itself does after the code (encoding results) is not traced."""
  _state["depth"] = 1 << 30


def result_map(obj) -> dict[str, Any] | None:
  """Where a result image came from: {"source": input image index, "map": [a, b, c, d, e, f]}
  (source x = a*x + b*y + c, y = d*x + e*y + f for pixel-edge coordinates x, y of the result), or
  None when its origin was not tracked."""
  mapping = _any_map(obj, "result")
  if mapping is None:
    return None
  return {"source": mapping[0], "map": [float(v) for v in mapping[1]]}


def note_result(obj) -> None:
  """Called on the result object(s): records crops/flips made by slicing a tracked array."""
  depth, _state["depth"] = _state["depth"], 0
  try:
    _array_map(obj, "result")
  finally:
    _state["depth"] = depth


# ---- wrapping ----------------------------------------------------------------------------------


def _outer(orig: Callable, after: Callable) -> Callable:
  """Wraps `orig`; at the outermost level, calls after(out, args, kwargs) to trace it."""

  @functools.wraps(orig)
  def wrapper(*args, **kwargs):
    if _state["depth"]:
      return orig(*args, **kwargs)
    _state["depth"] += 1
    try:
      out = orig(*args, **kwargs)
      try:
        after(out, args, kwargs)
      except Exception:  # pylint: disable=broad-except
        pass
    finally:
      _state["depth"] -= 1
    return out

  wrapper._cv_traced = True  # pylint: disable=protected-access
  return wrapper


def _arg(args, kwargs, i: int, name: str, default=None):
  if len(args) > i:
    return args[i]
  return kwargs.get(name, default)


def _pil_crop(out, args, kwargs):
  im, box = args[0], _arg(args, kwargs, 1, "box")
  if box is None:
    _set_img_map(out, _img_map(im))
    return
  x1, y1 = float(box[0]), float(box[1])
  mapping = _then(_img_map(im), (1.0, 0.0, x1, 0.0, 1.0, y1))
  _record_crop(_img_map(im), box, "Image.crop")
  _set_img_map(out, mapping)


def _pil_rotate(out, args, kwargs):
  im, angle = args[0], float(_arg(args, kwargs, 1, "angle"))
  expand = bool(_arg(args, kwargs, 3, "expand", False))
  center, translate = _arg(args, kwargs, 4, "center"), _arg(args, kwargs, 5, "translate")
  _record({"op": "rotate", "angle": _num(angle % 360.0), "expand": expand, "fn": "Image.rotate"})
  w, h = im.size
  _set_img_map(out, _then(_img_map(im), _rotate_local(angle, w, h, expand, center, translate)))


def _pil_transpose(out, args, kwargs):
  im, method = args[0], _arg(args, kwargs, 1, "method")
  name = Image.Transpose(method).name
  _record({"op": "transpose", "method": name, "fn": "Image.transpose"})
  local = _transpose_local(method, *im.size)
  _set_img_map(out, _then(_img_map(im), local) if local else None)


def _pil_resize(out, args, kwargs):
  im, size = args[0], _arg(args, kwargs, 1, "size")
  box = _arg(args, kwargs, 3, "box")
  w, h = im.size
  x0, y0, x1, y1 = (0.0, 0.0, float(w), float(h)) if box is None else (float(v) for v in box)
  if box is not None and (x0, y0, x1, y1) != (0.0, 0.0, float(w), float(h)):
    _record_crop(_img_map(im), (x0, y0, x1, y1), "Image.resize(box=...)")
  _record({"op": "resize", "size": [int(size[0]), int(size[1])], "from": [w, h], "fn": "Image.resize"})
  _set_img_map(out, _then(_img_map(im), _scale_local(x1 - x0, y1 - y0, out.size[0], out.size[1], x0, y0)))


def _wrap_thumbnail(orig):
  """Image.thumbnail resizes in place (it calls resize itself: recorded once, here)."""

  @functools.wraps(orig)
  def wrapper(self, *args, **kwargs):
    if _state["depth"]:
      return orig(self, *args, **kwargs)
    before, mapping = self.size, _img_map(self)
    _state["depth"] += 1
    try:
      out = orig(self, *args, **kwargs)
    finally:
      _state["depth"] -= 1
    if self.size != before:
      _record({"op": "resize", "size": list(self.size), "from": list(before), "fn": "Image.thumbnail"})
      _set_img_map(self, _then(mapping, _scale_local(*before, *self.size)))
    return out

  return wrapper


def _pil_filter(out, args, kwargs):
  im, flt = args[0], _arg(args, kwargs, 1, "filter")
  entry = {"op": "filter", "filter": getattr(flt, "__name__", type(flt).__name__), "fn": "Image.filter"}
  radius = getattr(flt, "radius", None)
  if isinstance(radius, (int, float)):
    entry["radius"] = _num(radius)
  _record(entry)
  _set_img_map(out, _img_map(im))


def _pil_transform(out, args, kwargs):
  im, method, data = args[0], _arg(args, kwargs, 2, "method"), _arg(args, kwargs, 3, "data")
  _record(
    {"op": "transform", "method": int(method) if isinstance(method, int) else str(method), "fn": "Image.transform"}
  )
  if method == Image.Transform.AFFINE and data is not None and len(data) == 6:
    _set_img_map(out, _then(_img_map(im), tuple(float(v) for v in data)))


def _same_geometry(out, args, kwargs):
  _set_img_map(out, _img_map(args[0]))


def _fromarray(out, args, kwargs):
  _set_img_map(out, _array_map(_arg(args, kwargs, 0, "obj"), "Image.fromarray"))


def _enhance(out, args, kwargs):
  enh, factor = args[0], _arg(args, kwargs, 1, "factor")
  _record(
    {
      "op": "enhance",
      "kind": type(enh).__name__,
      "factor": _num(factor) if isinstance(factor, (int, float)) else None,
      "fn": f"ImageEnhance.{type(enh).__name__}",
    }
  )
  _set_img_map(out, _img_map(getattr(enh, "image", None)))


def _draw(shape: str):
  def after(out, args, kwargs):
    _record({"op": "draw", "shape": shape, "fn": f"ImageDraw.{shape}"})

  return after


def _wrap_imageops(name: str, orig: Callable) -> Callable:
  """ImageOps functions: the PIL methods they call are recorded (attributed to them)."""

  @functools.wraps(orig)
  def wrapper(*args, **kwargs):
    if _state["depth"] or _state["via"] is not None:
      return orig(*args, **kwargs)
    n0 = len(OPS)
    _state["via"] = f"ImageOps.{name}"
    try:
      out = orig(*args, **kwargs)
    finally:
      _state["via"] = None
    try:
      if len(OPS) == n0:
        _record({"op": "imageops", "fn": f"ImageOps.{name}"})
      src = _arg(args, kwargs, 0, "image")
      if (
        isinstance(out, Image.Image) and _img_map(out) is None and isinstance(src, Image.Image) and out.size == src.size
      ):
        _set_img_map(out, _img_map(src))
    except Exception:  # pylint: disable=broad-except
      pass
    return out

  return wrapper


# numpy


def _np_convert(out, args, kwargs):
  _register_array(out, _any_map(_arg(args, kwargs, 0, "a"), "np.array"))


def _np_rot90(out, args, kwargs):
  m, k = args[0], int(_arg(args, kwargs, 1, "k", 1))
  axes = tuple(_arg(args, kwargs, 2, "axes", (0, 1)))
  if axes in ((1, 0), (-1, -2), (1, -2), (-1, 0)):
    k = -k
  k %= 4
  _record({"op": "rotate", "angle": 90 * k, "expand": True, "fn": "np.rot90"})
  mapping = _any_map(m, "np.rot90")
  if isinstance(m, np.ndarray) and m.ndim >= 2 and axes in ((0, 1), (1, 0)):
    method = {0: None, 1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}[k]
    local = _IDENTITY if method is None else _transpose_local(method, m.shape[1], m.shape[0])
    _register_array(out, _then(mapping, local))


def _np_flip_axis(fn: str, fixed_axis: int | None):
  """np.flip (axis from the call) or np.fliplr / np.flipud (fixed_axis 1 / 0)."""

  def after(out, args, kwargs):
    m = args[0]
    ndim = getattr(m, "ndim", 0)
    axis = fixed_axis if fixed_axis is not None else _arg(args, kwargs, 1, "axis")
    axes = (
      set(range(ndim))
      if axis is None
      else {int(a) % max(ndim, 1) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}
    )
    if ndim < 2 or not axes & {0, 1}:
      _record({"op": "numpy", "fn": fn})
      return
    if {0, 1} <= axes:
      direction, method = "both", Image.Transpose.ROTATE_180
    elif 1 in axes:
      direction, method = "horizontal", Image.Transpose.FLIP_LEFT_RIGHT
    else:
      direction, method = "vertical", Image.Transpose.FLIP_TOP_BOTTOM
    _record({"op": "flip", "direction": direction, "fn": fn})
    _register_array(out, _then(_any_map(m, fn), _transpose_local(method, m.shape[1], m.shape[0])))

  return after


def _np_transpose(out, args, kwargs):
  m = args[0]
  axes = _arg(args, kwargs, 1, "axes")
  ndim = getattr(m, "ndim", 0)
  swaps_xy = ndim >= 2 and (axes is None and ndim == 2 or axes is not None and tuple(axes)[:2] in ((1, 0), (1, -ndim)))
  if not swaps_xy:  # e.g. HWC -> CHW: not a geometric operation on the image
    _record({"op": "numpy", "fn": "np.transpose"})
    return
  _record({"op": "transpose", "method": "TRANSPOSE", "fn": "np.transpose"})
  _register_array(
    out, _then(_any_map(m, "np.transpose"), _transpose_local(Image.Transpose.TRANSPOSE, m.shape[1], m.shape[0]))
  )


def _np_generic(fn: str):
  def after(out, args, kwargs):
    if args and isinstance(args[0], (np.ndarray, Image.Image)):
      _any_map(args[0], fn)
      _record({"op": "numpy", "fn": fn})

  return after


# cv2

_CV2_DRAW = {
  "rectangle",
  "line",
  "circle",
  "ellipse",
  "putText",
  "polylines",
  "fillPoly",
  "arrowedLine",
  "drawContours",
  "fillConvexPoly",
  "drawMarker",
}


def _cv2_after(name: str):
  def after(out, args, kwargs):
    src = args[0] if args else None
    if not isinstance(src, np.ndarray):
      return
    mapping = _array_map(src, f"cv2.{name}")
    h, w = src.shape[:2]
    local = _IDENTITY
    if name == "rotate":
      code = int(_arg(args, kwargs, 1, "rotateCode"))
      angle = {cv2.ROTATE_90_CLOCKWISE: 270, cv2.ROTATE_180: 180, cv2.ROTATE_90_COUNTERCLOCKWISE: 90}[code]
      _record({"op": "rotate", "angle": angle, "expand": True, "fn": "cv2.rotate"})
      local = _transpose_local(
        {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}[angle], w, h
      )
    elif name == "flip":
      code = int(_arg(args, kwargs, 1, "flipCode"))
      direction = "vertical" if code == 0 else ("horizontal" if code > 0 else "both")
      _record({"op": "flip", "direction": direction, "fn": "cv2.flip"})
      local = _transpose_local(
        {
          "vertical": Image.Transpose.FLIP_TOP_BOTTOM,
          "horizontal": Image.Transpose.FLIP_LEFT_RIGHT,
          "both": Image.Transpose.ROTATE_180,
        }[direction],
        w,
        h,
      )
    elif name == "resize" and isinstance(out, np.ndarray):
      _record({"op": "resize", "size": [int(out.shape[1]), int(out.shape[0])], "from": [w, h], "fn": "cv2.resize"})
      local = _scale_local(w, h, out.shape[1], out.shape[0])
    elif name == "warpAffine":
      m = np.asarray(_arg(args, kwargs, 1, "M"), dtype=np.float64).reshape(2, 3)
      flags = int(_arg(args, kwargs, 4, "flags", 0) or 0)
      inv = np.vstack([m, [0, 0, 1]])
      if not flags & cv2.WARP_INVERSE_MAP:
        inv = np.linalg.inv(inv)
      local = tuple(float(v) for v in inv[:2].reshape(-1))
      fwd = np.linalg.inv(np.vstack([inv[:2], [0, 0, 1]]))[:2]
      scale = math.hypot(fwd[0, 0], fwd[0, 1])
      if abs(scale - 1) < 1e-3 and abs(fwd[0, 0] - fwd[1, 1]) < 1e-6 and abs(fwd[0, 1] + fwd[1, 0]) < 1e-6:
        angle = math.degrees(math.atan2(fwd[0, 1], fwd[0, 0])) % 360.0
        size = tuple(out.shape[1::-1]) if isinstance(out, np.ndarray) else (w, h)
        _record({"op": "rotate", "angle": _num(angle), "expand": size != (w, h), "fn": "cv2.warpAffine"})
      else:
        _record({"op": "cv2", "fn": "cv2.warpAffine"})
    elif name in _CV2_DRAW:
      _record({"op": "draw", "shape": name, "fn": f"cv2.{name}"})
      return
    else:
      _record({"op": "cv2", "fn": f"cv2.{name}"})
      if not (isinstance(out, np.ndarray) and out.ndim >= 2 and out.shape[:2] == (h, w)):
        return
    _register_array(out, _then(mapping, local))

  return after


_installed = False


def install() -> None:
  """Wraps the PIL, numpy and cv2 entry points (once per process)."""
  global _installed  # pylint: disable=global-statement
  if _installed:
    return
  _installed = True
  cls = Image.Image
  for name, after in (
    ("crop", _pil_crop),
    ("rotate", _pil_rotate),
    ("transpose", _pil_transpose),
    ("resize", _pil_resize),
    ("filter", _pil_filter),
    ("transform", _pil_transform),
    ("convert", _same_geometry),
    ("copy", _same_geometry),
    ("point", _same_geometry),
    ("quantize", _same_geometry),
  ):
    setattr(cls, name, _outer(getattr(cls, name), after))
  cls.thumbnail = _wrap_thumbnail(cls.thumbnail)
  Image.fromarray = _outer(Image.fromarray, _fromarray)
  ImageEnhance._Enhance.enhance = _outer(ImageEnhance._Enhance.enhance, _enhance)  # pylint: disable=protected-access
  for shape in (
    "arc",
    "bitmap",
    "chord",
    "circle",
    "ellipse",
    "line",
    "multiline_text",
    "pieslice",
    "point",
    "polygon",
    "rectangle",
    "regular_polygon",
    "rounded_rectangle",
    "text",
  ):
    if hasattr(ImageDraw.ImageDraw, shape):
      setattr(ImageDraw.ImageDraw, shape, _outer(getattr(ImageDraw.ImageDraw, shape), _draw(shape)))
  for name in (
    "autocontrast",
    "colorize",
    "contain",
    "cover",
    "crop",
    "deform",
    "equalize",
    "exif_transpose",
    "expand",
    "fit",
    "flip",
    "grayscale",
    "invert",
    "mirror",
    "pad",
    "posterize",
    "scale",
    "solarize",
  ):
    if hasattr(ImageOps, name):
      setattr(ImageOps, name, _wrap_imageops(name, getattr(ImageOps, name)))
  for name in ("array", "asarray", "asanyarray", "ascontiguousarray", "copy"):
    setattr(np, name, _outer(getattr(np, name), _np_convert))
  np.rot90 = _outer(np.rot90, _np_rot90)
  np.flip = _outer(np.flip, _np_flip_axis("np.flip", None))
  np.fliplr = _outer(np.fliplr, _np_flip_axis("np.fliplr", 1))
  np.flipud = _outer(np.flipud, _np_flip_axis("np.flipud", 0))
  np.transpose = _outer(np.transpose, _np_transpose)
  for name in (
    "pad",
    "roll",
    "clip",
    "where",
    "stack",
    "concatenate",
    "hstack",
    "vstack",
    "dstack",
    "swapaxes",
    "moveaxis",
    "tile",
    "repeat",
  ):
    setattr(np, name, _outer(getattr(np, name), _np_generic(f"np.{name}")))
  builtin = type(len)
  for name in dir(cv2):
    fn = getattr(cv2, name)
    if type(fn) is builtin and not name.startswith("_"):  # pylint: disable=unidiomatic-typecheck
      setattr(cv2, name, _outer(fn, _cv2_after(name)))
