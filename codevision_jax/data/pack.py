"""Examples -> one host's microbatch of fixed geometry: `rows` x `length` tokens and exactly
`patch_budget` image patches, whatever the examples hold.

    mb = pack(examples, length=512, rows=4, patch_budget=512, max_images=8, model_config=mc,
              pad_id=tokenizer.pad_token_id)

Tokens are right-padded to `length` in `rows` rows (rows without an example are all padding, with
no loss). The pixel values of all the examples' images travel as one array of `patch_budget`
patch rows; the space left over is filled by one *padding image* of zero pixels with grid
(1, merge, n_pad / merge): it gets its own attention segment (its own frame and windows), so real
patches never attend to it, and no token points at its features, so it changes neither the
output nor the gradient.

The microbatch (b = rows, T = length, P = patch_budget):

    input_ids, targets, loss_mask [b, T]; attention_mask [b, T]: 0 on padding, else the token's
      segment (1; 1, 2, ... with sequence packing); position_ids [3, b, T] (M-RoPE)
    image_index [b, T]: for an image token, the row of the merged vision features (numbered over
      all hosts' patches of the microbatch: host h's first row is h * P / merge^2); -1 elsewhere
    vision: `VisionInputs` (pixel_values [P, C*T*p*p] and the vision tower's `VisionMetadata`,
      whose window units and segments are made globally unique across hosts); float32, or uint8
      when every example's are (`preprocess_images(as_uint8=True)`: normalised on device)
    image_grid_thw [max_images, 3] (zero rows after the real images; the padding image is not
      listed): host-side bookkeeping, not a model input

`targets[t]` is `input_ids[t + 1]`; `loss_mask[t]` is 1 when that next token carries loss.
Each of the examples' `token_values` becomes a float32 [b, T] array under its name, aligned the
same way (position t holds the value of token t + 1) and 0 on padding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from flax import struct

from codevision_jax.data.encode import Example
from codevision_jax.models import prepare
from codevision_jax.models.config import VLConfig


@struct.dataclass
class VisionInputs:
  """The vision tower's inputs for a microbatch: patches and their metadata, one pytree."""

  pixel_values: np.ndarray  # [P, C * temporal_patch * patch^2]
  meta: prepare.VisionMetadata


def pack(
  examples: Sequence[Example],
  *,
  length: int,
  rows: int,
  patch_budget: int,
  max_images: int,
  model_config: VLConfig,
  pad_id: int,
  host: int = 0,
  max_image_patches: int = 0,
  rows_of: Sequence[int] | None = None,
) -> dict:
  """The microbatch of `examples` (see the module docstring); ValueError when they do not fit.

  `max_image_patches` bounds the patches of one image frame (the preprocessing's max_pixels over
  the patch area; 0: the patch budget): the vision tower's full-attention span, the same for
  every microbatch of a run whatever its images, so that microbatches stack and compile once.

  `rows_of` packs several examples per row (sequence packing): example k goes to row
  `rows_of[k]`, after the examples before it in that row (the examples in row-major order). Each
  is its own attention segment: `attention_mask` holds segment ids 1, 2, ... per row (0:
  padding), M-RoPE positions restart at every segment, and no loss crosses a boundary. Default:
  one example per row (segment 1)."""
  rows_of = list(range(len(examples))) if rows_of is None else list(rows_of)
  if len(rows_of) != len(examples) or rows_of != sorted(rows_of) or (rows_of and rows_of[-1] >= rows):
    raise ValueError(
      f"rows_of {rows_of} must give each of the {len(examples)} examples a row below {rows}, in row-major order"
    )
  ids = np.full((rows, length), pad_id, np.int32)
  token_mask = np.zeros((rows, length), np.int32)
  attention = np.zeros((rows, length), np.int32)
  positions = np.zeros((3, rows, length), np.int32)
  values = {
    name: np.zeros((rows, length), np.float32) for name in sorted({k for ex in examples for k in ex.token_values})
  }
  used = np.zeros((rows,), np.int64)
  for row, ex in zip(rows_of, examples):
    n, start = len(ex), int(used[row])
    if start + n > length:
      raise ValueError(
        f"an example of {n} tokens does not fit in row {row} of length {length} ({start} tokens already there)"
      )
    span = slice(start, start + n)
    ids[row, span], token_mask[row, span] = ex.input_ids, ex.loss_mask
    attention[row, span] = attention[row, start - 1] + 1 if start else 1
    positions[:, row, span] = prepare.position_ids(
      model_config, ex.input_ids[None], ex.image_grid_thw if len(ex.image_grid_thw) else None
    )[:, 0]
    for name, v in ex.token_values.items():
      values[name][row, span] = v
    used[row] += n
  patch_dim = (
    model_config.vision.in_channels * model_config.vision.temporal_patch_size * model_config.vision.patch_size**2
  )
  uint8 = bool(examples) and all(ex.pixel_values.dtype == np.uint8 for ex in examples)
  pixels = np.concatenate([ex.pixel_values for ex in examples] + [np.zeros((0, patch_dim), np.float32)]).astype(
    np.uint8 if uint8 else np.float32
  )
  grids = np.concatenate([ex.image_grid_thw for ex in examples] + [np.zeros((0, 3), np.int64)]).astype(np.int64)
  if len(pixels) > patch_budget or len(grids) > max_images:
    raise ValueError(
      f"the examples need {len(pixels)} patches / {len(grids)} images, over the budget {patch_budget} / {max_images}"
    )
  unit = model_config.vision.spatial_merge_size**2
  is_image = ids == model_config.image_token_id
  image_index = np.where(
    is_image, np.cumsum(is_image.ravel()).reshape(rows, length) - 1 + host * patch_budget // unit, -1
  ).astype(np.int32)
  thw = np.zeros((max_images, 3), np.int32)
  thw[: len(grids)] = grids
  return dict(
    input_ids=ids,
    attention_mask=attention,
    position_ids=positions,
    image_index=image_index,
    targets=np.concatenate([ids[:, 1:], np.full((rows, 1), pad_id, np.int32)], axis=1),
    loss_mask=_next(token_mask) * _same_segment_next(attention),
    vision=_vision_inputs(pixels, grids, patch_budget, model_config, host, max_image_patches or patch_budget),
    image_grid_thw=thw,
    **{name: _next(v) for name, v in values.items()},
  )


def _same_segment_next(segments: np.ndarray) -> np.ndarray:
  """1 where token t + 1 is in token t's segment (a target within the same conversation)."""
  return np.concatenate([segments[:, 1:] == segments[:, :-1], np.zeros_like(segments[:, :1], bool)], axis=1).astype(
    np.int32
  )


def _next(x: np.ndarray) -> np.ndarray:
  """Position t gets token t + 1's value (the last position: 0)."""
  return np.concatenate([x[:, 1:], np.zeros_like(x[:, :1])], axis=1)


def _vision_inputs(
  pixels, grids, budget: int, model_config: VLConfig, host: int, max_image_patches: int
) -> VisionInputs:
  """Pixel values and metadata padded to the budget with the padding image; this host's window
  units and segments offset past every earlier host's; the full-attention span bounds
  `max_image_patches` (the padding image may be longer: nobody reads its features)."""
  merge = model_config.vision.spatial_merge_size
  frames = grids[:, 1] * grids[:, 2] if len(grids) else np.zeros((0,), np.int64)
  if len(frames) and frames.max() > max_image_patches:
    raise ValueError(
      f"an image of grid {grids[int(frames.argmax())].tolist()} has "
      f"{int(frames.max())} patches per frame, more than the "
      f"{max_image_patches} that max_pixels allows; resize it with the run's "
      "image settings (data.max_pixels)"
    )
  n_pad = budget - len(pixels)
  if n_pad:
    grids = np.concatenate([grids, [[1, merge, n_pad // merge]]]).astype(np.int64)
    pixels = np.concatenate([pixels, np.zeros((n_pad, pixels.shape[1]), pixels.dtype)])
  if budget == 0:
    empty = np.zeros((0,), np.int32)
    return VisionInputs(pixels, prepare.VisionMetadata(np.zeros((0, 2), np.int32), empty, empty, empty))
  meta = prepare.vision_metadata(model_config, grids)
  span = prepare.span_bound(max_image_patches)
  meta = meta.replace(
    full_span=span,
    window_span=meta.window_span if model_config.vision.window_size else span,
    position_ids=meta.position_ids.astype(np.int32),
    window_index=(meta.window_index + host * budget // merge**2).astype(np.int32),
    full_segments=(meta.full_segments + host * budget).astype(np.int32),
    window_segments=(meta.window_segments + host * budget).astype(np.int32),
  )
  return VisionInputs(pixels, meta)
