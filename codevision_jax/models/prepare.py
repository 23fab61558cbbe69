"""Host-side preparation of a model's inputs: plain numpy functions of the `VLConfig` and the inputs.

Position ids and the vision tower's metadata depend on the image grids (data-dependent shapes),
so, as in transformers, they are computed on the host before the jitted forward:

* `position_ids` gives the 3-D (temporal, height, width) M-RoPE positions of a batch of tokens
  (`get_rope_index` is the family-independent computation);
* `vision_metadata` gives the vision tower's patch positions, window permutation, attention
  segments and (Qwen3-VL) position-table taps for a set of image grids;
* `check_image_tokens` checks that the image tokens of `input_ids` match the grids and pixels.

`prepare(config, input_ids, image_grid_thw, attention_mask)` is the first two together. The
input pipeline, the sampler and the model's own `__call__` all use these functions; none of them
needs a model instance.
"""

from __future__ import annotations

import numpy as np
from flax import struct

from codevision_jax.models.config import VLConfig
from codevision_jax.processing.image import num_image_tokens


@struct.dataclass
class VisionMetadata:
  """Everything the vision tower needs besides pixels, for N patches of a set of images.

  position_ids [N, 2] (h, w) in processor patch order; window_index [N / merge^2]: the order in
  which merged units enter the blocks (identity without windows); full_segments and
  window_segments [N]: attention segment ids in that order (full = one per frame, window = one
  per window). Families with learned position embeddings resampled to each grid (Qwen3-VL) also
  set interp_indices and interp_weights [N, taps]: each patch's embedding is the weighted sum of
  those table rows; None elsewhere.

  Segments are contiguous runs. full_span and window_span are static bounds (not arrays: jitted
  code specialises on them) on the length of the runs whose attention must be exact: the vision
  tower then attends within a band of patches around each block instead of over all N
  (`vision.segment_attention`). Runs longer than their bound (the padding image of a packed
  microbatch, whose outputs nobody reads) attend within the band only. 0: no bound, attention
  over all patches.
  """

  position_ids: np.ndarray
  window_index: np.ndarray
  full_segments: np.ndarray
  window_segments: np.ndarray
  interp_indices: np.ndarray | None = None
  interp_weights: np.ndarray | None = None
  full_span: int = struct.field(pytree_node=False, default=0)
  window_span: int = struct.field(pytree_node=False, default=0)

  def as_arrays(self) -> "VisionMetadata":
    """Device copies, to pass through `jax.jit`."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    return jax.tree.map(jnp.asarray, self)


# ---- text: M-RoPE position ids ------------------------------------------------------------------


def get_rope_index(
  input_ids,
  image_grid_thw=None,
  attention_mask=None,
  *,
  image_token_id: int,
  spatial_merge_size: int,
  video_token_id: int | None = None,
  video_grid_thw=None,
) -> tuple[np.ndarray, np.ndarray]:
  """3-D M-RoPE position ids, as transformers' `get_rope_index` computes them for images.

  Text tokens advance all three rows by one; an image of merged grid (t, h, w) occupies
  positions start + (t_idx, h_idx, w_idx) and advances the counter by max(h, w). Padding
  (attention_mask == 0) gets position 0 and is skipped by the counter, so left and right
  padding give the same positions to the real tokens.

  Returns position_ids [3, B, T] (int32) and rope_deltas [B] (max position + 1 - length), the
  offset that decoding adds to a plain running index.
  """
  input_ids = np.asarray(input_ids)
  b, t = input_ids.shape
  mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  grids = {}
  grids[image_token_id] = iter(np.asarray(image_grid_thw).reshape(-1, 3).tolist() if image_grid_thw is not None else [])
  if video_token_id is not None:
    grids[video_token_id] = iter(
      np.asarray(video_grid_thw).reshape(-1, 3).tolist() if video_grid_thw is not None else []
    )
  position_ids = np.zeros((3, b, t), np.int32)
  deltas = np.zeros((b,), np.int32)
  for row in range(b):
    ids = input_ids[row][mask[row]]
    if not len(ids):  # A row of padding only.
      continue
    kinds = np.where(np.isin(ids, list(grids)), ids, -1)
    chunks, current = [], 0
    # Runs of equal kind (text, or one modality's tokens): boundaries where the kind changes.
    edges = np.flatnonzero(kinds[1:] != kinds[:-1]) + 1
    for start, end in zip(np.r_[0, edges], np.r_[edges, len(ids)]):
      if kinds[start] == -1:
        chunks.append(np.broadcast_to(np.arange(end - start) + current, (3, end - start)))
        current += end - start
      else:
        try:
          gt, gh, gw = next(grids[int(kinds[start])])
        except StopIteration:
          raise ValueError(f"row {row}: more image/video token runs than entries in the grid array") from None
        lt, lh, lw = gt, gh // spatial_merge_size, gw // spatial_merge_size
        if lt * lh * lw != end - start:
          raise ValueError(
            f"row {row}: an image run of {end - start} tokens does not match its "
            f"grid {gt}x{gh}x{gw} (expects {lt * lh * lw} tokens after merging)"
          )
        tt, hh, ww = np.meshgrid(np.arange(lt), np.arange(lh), np.arange(lw), indexing="ij")
        chunks.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + current)
        current += max(gh, gw) // spatial_merge_size
    if chunks:
      positions = np.concatenate(chunks, axis=1)
      position_ids[:, row, mask[row]] = positions
      deltas[row] = positions.max() + 1 - len(ids)
  return position_ids, deltas


def position_ids(config: VLConfig, input_ids, image_grid_thw=None, attention_mask=None) -> np.ndarray:
  """M-RoPE position ids [3, B, T] (int32) of a batch for this model."""
  positions, _ = get_rope_index(
    np.asarray(input_ids),
    image_grid_thw,
    attention_mask,
    image_token_id=config.image_token_id,
    spatial_merge_size=config.vision.spatial_merge_size,
  )
  return positions


# ---- vision: patch positions, windows, position-table taps ----------------------------------------


def vision_position_ids(grid_thw, merge: int) -> np.ndarray:
  """(h, w) of every patch, laid out block-major over merge x merge blocks (processor order)."""
  out = []
  for t, h, w in np.asarray(grid_thw).reshape(-1, 3).tolist():
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hpos = hpos.reshape(shape).transpose(0, 2, 1, 3).ravel()
    wpos = wpos.reshape(shape).transpose(0, 2, 1, 3).ravel()
    out.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
  return np.concatenate(out, axis=0).astype(np.int32)


def span_bound(longest: int) -> int:
  """A static bound on segment lengths >= `longest`: the next power of two, at least 64, so that
  jitted code sees few distinct bounds."""
  return max(64, 1 << max(int(longest) - 1, 0).bit_length())


def _segments_from_lengths(lengths) -> np.ndarray:
  lengths = np.asarray(lengths, np.int64)
  return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def window_metadata(grid_thw, *, spatial_merge_size: int, patch_size: int, window_size: int = 0) -> VisionMetadata:
  """Window permutation and attention segments as transformers' `get_vision_window_index`.

  With `window_size` 0 there are no windows (Qwen3-VL): identity order, window segments equal
  to the full-attention ones. The spans bound the frames' patches (`span_bound`) and a whole
  window's, whatever the grids hold.
  """
  grid = np.asarray(grid_thw).reshape(-1, 3).astype(np.int64)
  merge = spatial_merge_size
  unit = merge * merge
  full = _segments_from_lengths(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))
  n_units = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum()) // unit
  full_span = span_bound((grid[:, 1] * grid[:, 2]).max()) if len(grid) else 0
  if not window_size:
    return VisionMetadata(
      vision_position_ids(grid, merge),
      np.arange(n_units, dtype=np.int32),
      full,
      full,
      full_span=full_span,
      window_span=full_span,
    )
  win = window_size // merge // patch_size
  if win <= 0:
    raise ValueError(f"window_size {window_size} is smaller than one merged patch ({merge * patch_size} pixels)")
  index, lengths, offset = [], [], 0
  for t, h, w in grid.tolist():
    lh, lw = h // merge, w // merge
    ids = np.arange(t * lh * lw).reshape(t, lh, lw)
    nh, nw = -(-lh // win), -(-lw // win)
    padded = np.full((t, nh * win, nw * win), -1, np.int64)
    padded[:, :lh, :lw] = ids
    padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, win * win)
    for window in padded:
      members = window[window >= 0]
      if len(members):
        index.append(members + offset)
        lengths.append(len(members) * unit)
    offset += t * lh * lw
  window_index = np.concatenate(index).astype(np.int32)
  return VisionMetadata(
    vision_position_ids(grid, merge),
    window_index,
    full,
    _segments_from_lengths(lengths),
    full_span=full_span,
    window_span=span_bound(win * win * unit),
  )


def interpolation_taps(grid_thw, num_grid_per_side: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear (align_corners) resampling of the square learned position table to each grid.

  transformers' `get_vision_interpolation_indices_and_weights(mode="bilinear",
  align_corners=True)`, in numpy float32: for every patch, in processor (merge-block) order, 4
  row indices into the flattened [side * side] table and their weights. Returns int32 [N, 4] and
  float32 [N, 4].
  """
  side = num_grid_per_side
  idx, wts = [], []
  for t, h, w in np.asarray(grid_thw).reshape(-1, 3).tolist():
    rows = vision_position_ids([[1, h, w]], merge)  # (row, col) per patch, merge-block order
    h_taps, h_w = _axis_taps(rows[:, 0], h, side)
    w_taps, w_w = _axis_taps(rows[:, 1], w, side)
    index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    idx.append(np.tile(index, (t, 1)))
    wts.append(np.tile(weight, (t, 1)))
  return np.concatenate(idx).astype(np.int32), np.concatenate(wts).astype(np.float32)


def _axis_taps(index: np.ndarray, size: int, side: int):
  src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
  floor = np.floor(src)
  offsets = np.arange(2)
  taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
  distance = np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32))
  return taps, np.maximum(np.float32(1) - distance, 0).astype(np.float32)


def vision_metadata(config: VLConfig, image_grid_thw) -> VisionMetadata:
  """The vision tower's metadata for these grids, by family.

  Qwen2.5-VL: windows of `vision.window_size` pixels. Qwen3-VL: no windows, and the taps that
  resample its learned position table to each grid.
  """
  v = config.vision
  grid = np.asarray(image_grid_thw)
  if config.model_type == "qwen3_vl":
    meta = window_metadata(grid, spatial_merge_size=v.spatial_merge_size, patch_size=v.patch_size)
    indices, weights = interpolation_taps(grid, int(v.num_position_embeddings**0.5), v.spatial_merge_size)
    return meta.replace(interp_indices=indices, interp_weights=weights)
  return window_metadata(
    grid, spatial_merge_size=v.spatial_merge_size, patch_size=v.patch_size, window_size=v.window_size
  )


# ---- checks and the whole preparation ------------------------------------------------------------


def check_image_tokens(config: VLConfig, input_ids, pixel_values=None, image_grid_thw=None) -> None:
  """Raises ValueError unless the image tokens of `input_ids` match the grids' merged patches and
  `pixel_values` has one row per patch of the grids."""
  n_tokens = int((np.asarray(input_ids) == config.image_token_id).sum())
  if image_grid_thw is None:
    if n_tokens:
      raise ValueError(
        f"input_ids hold {n_tokens} image tokens (id {config.image_token_id}) "
        "but no pixel_values/image_grid_thw were given"
      )
    return
  grid = np.asarray(image_grid_thw).reshape(-1, 3)
  n_features = int(num_image_tokens(grid, config.vision.spatial_merge_size).sum())
  if n_features != n_tokens:
    raise ValueError(
      f"image tokens and image features do not match: input_ids hold {n_tokens} "
      f"image tokens, image_grid_thw {grid.tolist()} gives {n_features} features"
    )
  n_patches = int(grid.prod(-1).sum())
  if pixel_values is None or np.shape(pixel_values)[0] != n_patches:
    rows = None if pixel_values is None else np.shape(pixel_values)[0]
    raise ValueError(f"pixel_values has {rows} rows, image_grid_thw {grid.tolist()} needs {n_patches} patches")


def prepare(
  config: VLConfig, input_ids, image_grid_thw=None, attention_mask=None
) -> tuple[np.ndarray, VisionMetadata | None]:
  """M-RoPE position ids [3, B, T] and the vision metadata (None without images), in numpy."""
  positions = position_ids(config, input_ids, image_grid_thw, attention_mask)
  meta = None if image_grid_thw is None else vision_metadata(config, image_grid_thw)
  return positions, meta
