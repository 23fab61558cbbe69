"""core_ops / non_core_ops / crop_boxes: the trace -> CodeVision core operations mapping."""

import pytest

from codevision_jax.execution.ops import CORE_OPS, core_ops, crop_boxes, non_core_ops


@pytest.mark.parametrize(
  "op,core",
  [
    ({"op": "rotate", "angle": 90, "expand": True, "fn": "Image.rotate"}, "rotate_90"),
    ({"op": "rotate", "angle": 90.0000000001, "expand": False, "fn": "Image.rotate"}, "rotate_90"),
    ({"op": "rotate", "angle": 180, "expand": True, "fn": "np.rot90"}, "rotate_180"),
    ({"op": "rotate", "angle": 270, "expand": True, "fn": "cv2.rotate"}, "rotate_270"),
    ({"op": "transpose", "method": "ROTATE_90", "fn": "Image.transpose"}, "rotate_90"),
    ({"op": "transpose", "method": "ROTATE_270", "fn": "Image.transpose"}, "rotate_270"),
    ({"op": "transpose", "method": "FLIP_LEFT_RIGHT", "fn": "ImageOps.mirror"}, "flip_horizontal"),
    ({"op": "transpose", "method": "FLIP_TOP_BOTTOM", "fn": "ImageOps.flip"}, "flip_vertical"),
    ({"op": "flip", "direction": "horizontal", "fn": "np.fliplr"}, "flip_horizontal"),
    ({"op": "flip", "direction": "vertical", "fn": "cv2.flip"}, "flip_vertical"),
    ({"op": "flip", "direction": "both", "fn": "cv2.flip"}, "rotate_180"),
    ({"op": "crop", "box": [1, 2, 3, 4], "source": 0, "fn": "Image.crop"}, "crop"),
  ],
)
def test_core_op_of_each_entry(op, core):
  assert core_ops([op]) == {core}
  assert core in CORE_OPS


@pytest.mark.parametrize(
  "op",
  [
    {"op": "rotate", "angle": 30, "expand": True},
    {"op": "rotate", "angle": 0, "expand": False},
    {"op": "transpose", "method": "TRANSPOSE"},
    {"op": "resize", "size": [10, 10]},
    {"op": "enhance", "kind": "Contrast", "factor": 1.5},
    {"op": "cv2", "fn": "cv2.GaussianBlur"},
    {"op": "rotate", "angle": "garbage"},
    {"op": "flip", "direction": "sideways"},
  ],
)
def test_non_core_entries(op):
  assert core_ops([op]) == set()
  assert non_core_ops([op])


def test_sets_names_and_boxes():
  ops = [
    {"op": "rotate", "angle": 90, "expand": True},
    {"op": "crop", "box": [0, 0, 5, 5], "source": 0},
    {"op": "crop", "box": [1, 1, 2, 2], "source": None},
    {"op": "cv2", "fn": "cv2.Canny"},
    {"op": "enhance", "kind": "Sharpness"},
    {"op": "crop", "box": [3, 3, 9, 9], "source": 1},
    "not a dict",
  ]
  assert core_ops(ops) == {"rotate_90", "crop"}
  assert non_core_ops(ops) == {"cv2.Canny", "enhance"}
  assert crop_boxes(ops) == [[0, 0, 5, 5], [3, 3, 9, 9]]
  assert crop_boxes(ops, source=1) == [[3, 3, 9, 9]]
  assert core_ops([]) == set() and non_core_ops([]) == set()
