"""One conversation -> one `Example`: its token ids, the loss mask, and its images as the model
takes them. Packing examples into batches of fixed geometry is `data.pack`.

    example = encode(conversation, tokenizer, settings)
    sizes = record_sizes(source, tokenizer, settings)   # [N, 3]: tokens, patches, images

`record_sizes` is the same encoding from image headers alone (no pixel decoding): the batch plan
needs every record's size before the first step.
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
  return chat.tokenize_conversation(tokenizer, conversation.messages,
                                    image_lib.num_image_tokens(grids, merge_size),
                                    tools=conversation.tools)


def encode(conversation, tokenizer, settings: image_lib.ImageSettings) -> Example:
  """Decodes and preprocesses the conversation's images and tokenises its messages."""
  pv, grids = image_lib.preprocess_images(
      [records_lib.load_image(x) for x in conversation.images], **settings.as_kwargs())
  tok = _tokenize(conversation, tokenizer, grids, settings.merge_size)
  return Example(tok.input_ids, tok.loss_mask, np.asarray(pv, np.float32),
                 np.asarray(grids, np.int64).reshape(-1, 3))


# ---- sizes from image headers -----------------------------------------------------------------

def _image_size(source):
  """(width, height) from the header only."""
  if isinstance(source, Image.Image):
    return source.size
  if isinstance(source, (bytes, bytearray)):
    with Image.open(io.BytesIO(source)) as im:
      return im.size
  with Image.open(os.fspath(source)) as im:
    return im.size


def image_grids(conversation, settings: image_lib.ImageSettings) -> np.ndarray:
  """The `image_grid_thw` [N, 3] preprocessing will give, from image headers only."""
  grids = []
  for source in conversation.images:
    w, h = _image_size(source)
    rh, rw = image_lib.smart_resize(h, w, settings.factor, settings.min_pixels, settings.max_pixels)
    grids.append((1, rh // settings.patch_size, rw // settings.patch_size))
  return np.asarray(grids, np.int64).reshape(-1, 3)


def record_sizes(source, tokenizer, settings: image_lib.ImageSettings) -> np.ndarray:
  """[N, 3] int64: tokens, patches and images of every record (one pass, no pixel decoding)."""
  out = np.zeros((len(source), 3), np.int64)
  for i in range(len(source)):
    conv = source[i]
    grids = image_grids(conv, settings)
    out[i] = (len(_tokenize(conv, tokenizer, grids, settings.merge_size).input_ids),
              int(grids.prod(-1).sum()), len(grids))
  return out
