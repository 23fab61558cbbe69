"""Images of published rows: a path beside the benchmark file, bytes, an HF Image feature dict,
or VLMEvalKit's base64 text (with its references to an earlier row's image)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os

from PIL import Image

from evals.suites.fields import missing
from evals.suites.items import BadRow

_REF_MAX_CHARS = 64  # VLMEvalKit: an image field this short names the row holding the image.


def image_file(value, field: str, root: str, hint: str = "") -> str:
  """An image path from a row, resolved against `root` and required to exist -> absolute path."""
  if missing(value) or not isinstance(value, str):
    raise BadRow(f"no image path in field {field!r}")
  path = os.path.abspath(os.path.join(root, value))
  if not os.path.isfile(path):
    raise BadRow(f"image file {path} does not exist{hint}")
  return path


def image_value(value, field: str, root: str):
  """An image from a row: bytes, a {"bytes"|"path"} dict (the HF Image feature) or a path."""
  if isinstance(value, dict):
    if value.get("bytes") is not None:
      return image_value(value["bytes"], field, root)
    return image_file(value.get("path"), field, root)
  if isinstance(value, (bytes, bytearray, memoryview)):
    if not value:
      raise BadRow(f"no image in field {field!r}")
    return bytes(value)
  return image_file(value, field, root)


class Base64Images:
  """Images of VLMEvalKit-style tables, decoded once.

  A text field holds the image as base64, or (at most 64 characters) the `index` of an earlier row
  that holds it, VLMEvalKit's way of storing a repeated image once. Rows with the same image share
  one bytes object. Non-text fields (bytes, {"bytes"} dicts) are taken as `image_value` takes them.
  """

  def __init__(self, root: str):
    self._root = root
    self._by_index: dict[str, bytes | str] = {}
    self._by_digest: dict[bytes, bytes] = {}

  def get(self, value, index: str, field: str = "image"):
    if missing(value):
      raise BadRow(f"no image in field {field!r}")
    if not isinstance(value, str):
      image = image_value(value, field, self._root)
    elif len(value.strip()) <= _REF_MAX_CHARS:
      ref = value.strip()
      if ref not in self._by_index:
        raise BadRow(f"field {field!r} refers to the image of row index {ref!r}, which no earlier row holds")
      image = self._by_index[ref]
    else:
      image = self._decode(value, field)
    self._by_index[index] = image
    return image

  def _decode(self, text: str, field: str) -> bytes:
    digest = hashlib.sha1(text.encode()).digest()
    if digest not in self._by_digest:
      try:
        self._by_digest[digest] = base64.b64decode(text)
      except (binascii.Error, ValueError) as e:
        raise BadRow(f"field {field!r} is not base64 image data ({e})") from None
    return self._by_digest[digest]


def check_image(image) -> None:
  """Raises BadRow unless PIL can open and verify the image (no full decode)."""
  try:
    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
      im.verify()
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...).
    where = f"image file {image}" if isinstance(image, str) else "the image"
    raise BadRow(f"{where} cannot be decoded ({type(e).__name__}: {e}); replace it with a PNG or JPEG") from None
