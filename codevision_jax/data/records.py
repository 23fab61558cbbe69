"""The normalised conversation record shared by SFT, RL and evals.

Messages use our roles (system/user/assistant/tool) and `<image>` placeholders that refer, in
order, to `images`. An image is a path (str, absolute after reading) or encoded bytes (PNG/JPEG),
anything `load_image` can open. The metadata fields are what RL rewards and evals read.
"""

import dataclasses
import io
import os

from PIL import Image

from codevision_jax.processing import code_tool


@dataclasses.dataclass
class Conversation:
  messages: list  # [{"role", "content", optional "tool_calls"}]
  images: list  # str paths or bytes, one per <image> placeholder, in order
  tools: list | None = None  # tool schemas ({"type": "function", "function": {...}})
  ground_truth: str | None = None
  required_transforms: list | None = None  # e.g. ["crop", "rotate_90"]
  target_box: list | None = None  # [x1, y1, x2, y2] in pixels of the given (first) image
  question: str | None = None
  answer: str | None = None
  data_source: str | None = None
  extra: dict = dataclasses.field(default_factory=dict)
  origin: str = ""  # "<file>:<record index>", for error messages

  def num_placeholders(self):
    return sum((m.get("content") or "").count(code_tool.IMAGE_PLACEHOLDER) for m in self.messages)


def load_image(source):
  """Opens an image source (path, bytes, or a PIL image) as an RGB PIL image."""
  if isinstance(source, Image.Image):
    image = source
  elif isinstance(source, (bytes, bytearray)):
    image = Image.open(io.BytesIO(source))
  elif isinstance(source, (str, os.PathLike)):
    image = Image.open(source)
  else:
    raise TypeError(f"cannot open an image from {type(source).__name__}; expected a path or bytes")
  image.load()
  return image if image.mode == "RGB" else image.convert("RGB")


def png_bytes(image):
  """Encodes a PIL image as PNG bytes (the in-memory image source used by generators)."""
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()
