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


def describe_source(source):
  """A short name of an image source for messages: its path, or its size and first bytes."""
  if isinstance(source, (bytes, bytearray)):
    return f"{len(source)} bytes of image data starting {bytes(source[:8])!r}"
  if isinstance(source, (str, os.PathLike)):
    return repr(os.fspath(source))
  return type(source).__name__


def load_image(source, origin=None):
  """Opens an image source (path, bytes, or a PIL image) as an RGB PIL image.

  An image that cannot be decoded raises ValueError naming the file (or the bytes' size and first
  bytes) and `origin` (e.g. the record's "<file>:<index>") when given."""
  if isinstance(source, Image.Image):
    image = source
  elif isinstance(source, (bytes, bytearray, str, os.PathLike)):
    try:
      image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
      image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      reason = str(e).split(" <_io.")[0] if "<_io." in str(e) else str(e)
      where = f"{origin}: " if origin else ""
      raise ValueError(
        f"{where}image {describe_source(source)} cannot be decoded "
        f"({type(e).__name__}: {reason}); replace or drop it (or skip bad "
        "records with data.skip_bad=True)"
      ) from None
  else:
    raise TypeError(f"cannot open an image from {type(source).__name__}; expected a path or bytes")
  return image if image.mode == "RGB" else image.convert("RGB")


def png_bytes(image, compress_level: int = 6):
  """Encodes a PIL image as PNG bytes (the in-memory image source used by generators). PNG is
  lossless at every `compress_level` (0-9): a lower level encodes faster into a larger file
  (PIL's default is 6)."""
  buf = io.BytesIO()
  image.save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()
