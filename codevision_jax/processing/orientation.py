"""The orientation transforms of CodeVision's benchmarks and tasks, and their geometry.

`TRANSFORMS` are upright ("none") and the five transforms MVToolBench and the orientation evals
apply: rotate 90/180/270 (counter-clockwise, PIL `rotate(D, expand=True)`), flip horizontal
(left to right) and flip vertical (top to bottom). A required `rotate_D` means the image *was*
rotated by D; `inverse_transform` gives the one that undoes it.
"""

from PIL import Image

TRANSFORMS = ("none", "rotate_90", "rotate_180", "rotate_270", "flip_horizontal", "flip_vertical")


def apply_transform(image, transform):
  """Applies a named transform to a PIL image (rotations counter-clockwise with expand)."""
  if transform == "none":
    return image.copy()
  if transform.startswith("rotate_"):
    return image.rotate(int(transform.split("_")[1]), expand=True)
  if transform == "flip_horizontal":
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  if transform == "flip_vertical":
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
  raise ValueError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")


def inverse_transform(transform):
  """The transform undoing `transform`: rotate_D -> rotate_{(360-D) mod 360}; flips self-inverse."""
  if transform.startswith("rotate_"):
    return f"rotate_{(360 - int(transform.split('_')[1])) % 360}"
  return transform


def transform_box(box, transform, size):
  """Maps a box [x1, y1, x2, y2] in an image of `size` (w, h) through `transform`."""
  x1, y1, x2, y2 = box
  w, h = size
  if transform == "none":
    return [x1, y1, x2, y2]
  if transform == "rotate_90":
    return [y1, w - x2, y2, w - x1]
  if transform == "rotate_180":
    return [w - x2, h - y2, w - x1, h - y1]
  if transform == "rotate_270":
    return [h - y2, x1, h - y1, x2]
  if transform == "flip_horizontal":
    return [w - x2, y1, w - x1, y2]
  if transform == "flip_vertical":
    return [x1, h - y2, x2, h - y1]
  raise ValueError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")
