"""One conversation -> one `Example`: its token ids, the loss mask, and its images as the model
takes them. Packing examples into batches of fixed geometry is `data.pack`.

    example = encode(conversation, tokenizer, settings)
    tokens, patches, images = record_size(conversation, tokenizer, settings)

`record_size` is the same encoding from image headers alone (no pixel decoding): the batch plan
needs every record's size before the first step (`data.sizing.record_sizes` sizes a whole source,
in worker processes; `data.size_cache` keeps the sizes per data file across starts).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from codevision_jax.data import records as records_lib
from codevision_jax.processing import chat, image as image_lib


@dataclasses.dataclass(frozen=True)
class Example:
  """A tokenised conversation and its preprocessed images."""

  input_ids: np.ndarray  # int32 [T], image pads expanded
  loss_mask: np.ndarray  # int32 [T], 1 on tokens that carry loss (assistant turns)
  pixel_values: np.ndarray  # float32 [P, C * temporal_patch * patch^2], the images' patches in order
  image_grid_thw: np.ndarray  # int64 [N, 3]
  # Per-token float32 arrays [T] packed beside the tokens (RL: the sampler's log-probs, the
  # advantage), by name.
  token_values: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.input_ids)


def _tokenize(conversation, tokenizer, grids, merge_size) -> chat.TokenizedConversation:
  return chat.tokenize_conversation(
    tokenizer, conversation.messages, image_lib.num_image_tokens(grids, merge_size), tools=conversation.tools
  )


def encode(conversation, tokenizer, settings: image_lib.ImageSettings) -> Example:
  """Decodes and preprocesses the conversation's images and tokenises its messages."""
  pv, grids = image_lib.preprocess_images(
    [records_lib.load_image(x, origin=getattr(conversation, "origin", "") or None) for x in conversation.images],
    **settings.as_kwargs(),
  )
  tok = _tokenize(conversation, tokenizer, grids, settings.merge_size)
  return Example(tok.input_ids, tok.loss_mask, np.asarray(pv, np.float32), np.asarray(grids, np.int64).reshape(-1, 3))


# ---- sizes from image headers ---------------------------------------------------------------


class BadImage(ValueError):
  """An image of a record that cannot be decoded."""


def _open(source):
  if isinstance(source, (bytes, bytearray)):
    return Image.open(io.BytesIO(source))
  return Image.open(os.fspath(source))


def checked_image_size(source) -> tuple[int, int]:
  """(width, height) of an image, after checking that it decodes: PNG's chunk checksums through
  to its end (`verify`), a JPEG decoded at an eighth of its size, other formats in full. Raises
  BadImage with the reason."""
  if isinstance(source, Image.Image):  # Already decoded in memory.
    return source.size
  try:
    with _open(source) as im:
      size = im.size
      if im.format == "PNG":
        im.verify()
      else:
        if im.format == "JPEG":
          im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    reason = str(e).split(" <_io.")[0]  # PIL names the stream object; the caller names the image.
    raise BadImage(f"{type(e).__name__}: {reason}") from None


def image_grids(conversation, settings: image_lib.ImageSettings) -> np.ndarray:
  """The `image_grid_thw` [N, 3] preprocessing will give; every image is checked to decode
  (`checked_image_size`). BadImage names the image by index (and path)."""
  grids = []
  for k, source in enumerate(conversation.images):
    try:
      w, h = checked_image_size(source)
    except BadImage as e:
      what = os.fspath(source) if isinstance(source, (str, os.PathLike)) else records_lib.describe_source(source)
      raise BadImage(f"image {k} ({what}) cannot be decoded: {e}") from None
    rh, rw = image_lib.smart_resize(h, w, settings.factor, settings.min_pixels, settings.max_pixels)
    grids.append((1, rh // settings.patch_size, rw // settings.patch_size))
  return np.asarray(grids, np.int64).reshape(-1, 3)


BAD_RECORD = -1
"""The token count `record_sizes` gives a record skipped for a broken image (it fits no batch)."""


def record_size(conversation, tokenizer, settings: image_lib.ImageSettings) -> tuple[int, int, int]:
  """(tokens, patches, images) of one record, from its image headers (every image is checked to
  decode). Raises BadImage or ImagePreprocessingError for an image that cannot be used."""
  grids = image_grids(conversation, settings)
  return (
    len(_tokenize(conversation, tokenizer, grids, settings.merge_size).input_ids),
    int(grids.prod(-1).sum()),
    len(grids),
  )
