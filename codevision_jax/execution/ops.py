"""Maps the executor's runtime trace (`ops`) to CodeVision's core operations. Pure functions.

The trace is a list of dicts recorded by `executor/trace.py`, one per image operation the code
actually performed, for example:
  {"op": "crop", "box": [x1, y1, x2, y2], "source": 0, "fn": "Image.crop"}
  {"op": "rotate", "angle": 90, "expand": True, "fn": "Image.rotate"}
  {"op": "transpose", "method": "FLIP_LEFT_RIGHT", "fn": "ImageOps.mirror"}
  {"op": "flip", "direction": "horizontal", "fn": "np.fliplr"}
  {"op": "resize", "size": [w, h], ...}, {"op": "enhance", ...}, {"op": "filter", ...},
  {"op": "draw", ...}, {"op": "cv2", "fn": "cv2.GaussianBlur"}, {"op": "numpy", "fn": "np.pad"}

Convention: `rotate_D` means a counter-clockwise rotation by D degrees, as PIL `Image.rotate(D)`,
`Image.transpose(ROTATE_D)` and `np.rot90(a, D // 90)`; `cv2.rotate(a, ROTATE_90_CLOCKWISE)` is
therefore `rotate_270`. Every op's angle in the trace already follows this convention.
"""

from __future__ import annotations

from typing import Any, Iterable

CORE_OPS = ("crop", "rotate_90", "rotate_180", "rotate_270", "flip_horizontal", "flip_vertical")

_TRANSPOSE_TO_CORE = {
  "FLIP_LEFT_RIGHT": "flip_horizontal",
  "FLIP_TOP_BOTTOM": "flip_vertical",
  "ROTATE_90": "rotate_90",
  "ROTATE_180": "rotate_180",
  "ROTATE_270": "rotate_270",
}
_FLIP_TO_CORE = {"horizontal": "flip_horizontal", "vertical": "flip_vertical", "both": "rotate_180"}


def _rotation(angle: Any) -> str | None:
  try:
    a = float(angle) % 360.0
  except (TypeError, ValueError):
    return None
  for d in (90, 180, 270):
    if abs(a - d) < 1e-6:
      return f"rotate_{d}"
  return None


def op_core(op: dict[str, Any]) -> str | None:
  """The core operation one trace entry performs, or None if it is not a core operation."""
  kind = op.get("op")
  if kind == "crop":
    return "crop"
  if kind == "rotate":
    return _rotation(op.get("angle"))
  if kind == "transpose":
    return _TRANSPOSE_TO_CORE.get(op.get("method"))
  if kind == "flip":
    return _FLIP_TO_CORE.get(op.get("direction"))
  return None


def core_ops(ops: Iterable[dict[str, Any]]) -> set[str]:
  """The set of CodeVision core operations (`CORE_OPS`) the traced code performed."""
  return {c for c in (op_core(op) for op in ops if isinstance(op, dict)) if c is not None}


def non_core_ops(ops: Iterable[dict[str, Any]]) -> set[str]:
  """Names of the traced operations outside the core set (e.g. "enhance", "cv2.GaussianBlur").

  A rotation by an angle that is not a multiple of 90 degrees counts as "rotate". The trace's
  "truncated" marker is not an operation, nor are "numpy" entries (array plumbing such as layout
  changes, stacking or padding: no returned pixels can show them, so the executor cannot vouch
  for them; see executor/evidence.py).
  """
  names = set()
  for op in ops:
    if isinstance(op, dict) and op_core(op) is None and op.get("op") not in ("truncated", "numpy"):
      kind = op.get("op")
      names.add(str(op.get("fn")) if kind in ("cv2", "numpy") else str(kind))
  return names


def crop_boxes(ops: Iterable[dict[str, Any]], source: int | None = None) -> list[list[float]]:
  """Crop boxes [x1, y1, x2, y2] in original-image pixels, optionally only those of image `source`.

  Boxes of crops whose origin could not be tracked (`"source": None`) are left out.
  """
  return [
    list(op["box"])
    for op in ops
    if isinstance(op, dict)
    and op.get("op") == "crop"
    and op.get("source") is not None
    and (source is None or op.get("source") == source)
  ]
