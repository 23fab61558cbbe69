"""Rotary position embeddings: 2-D vision RoPE, multimodal RoPE (M-RoPE), and the position ids.

Position ids depend on image grids (data-dependent shapes), so, as in transformers, they are
computed on the host with numpy before the jitted forward:

* `get_rope_index` gives the 3-D (temporal, height, width) text positions of a batch;
* `vision_metadata` gives the vision tower's patch positions, window permutation and attention
  segments for a set of image grids.

The device-side functions (`mrope_cos_sin`, `vision_cos_sin`, `apply_rotary`) are pure jnp.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [..., T, H, D]; cos/sin broadcastable to [..., T, 1, D]."""
  return x * cos + rotate_half(x) * sin


def inv_frequencies(dim: int, theta: float) -> np.ndarray:
  """1 / theta^(2i/dim), computed in float32 like torch."""
  exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


# ---- text: multimodal RoPE ------------------------------------------------------------------

def mrope_axis_of_frequency(mrope_section, interleaved: bool) -> np.ndarray:
  """For each of the head_dim/2 frequencies, which position row (0=t, 1=h, 2=w) drives it.

  Qwen2.5-VL splits the frequencies into consecutive sections [t | h | w]; Qwen3-VL interleaves
  them (t, h, w, t, h, w, ...) for the first 3*section entries of h and w, and t elsewhere.
  """
  n = int(sum(mrope_section))
  if not interleaved:
    return np.concatenate([np.full(s, i % 3) for i, s in enumerate(mrope_section)]).astype(np.int32)
  axis = np.zeros(n, np.int32)
  for dim, offset in ((1, 1), (2, 2)):
    axis[offset:mrope_section[dim] * 3:3] = dim
  return axis


def mrope_cos_sin(position_ids: jax.Array, inv_freq: np.ndarray, axis_of_freq: np.ndarray,
                  dtype) -> tuple[jax.Array, jax.Array]:
  """position_ids [3, B, T] -> cos, sin [B, T, head_dim] in `dtype`."""
  pos = jnp.moveaxis(position_ids.astype(jnp.float32), 0, -1)  # [B, T, 3]
  pos = jnp.take(pos, jnp.asarray(axis_of_freq), axis=-1)       # [B, T, D/2]
  freqs = pos * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def get_rope_index(input_ids, image_grid_thw=None, attention_mask=None, *, image_token_id: int,
                   spatial_merge_size: int, video_token_id: int | None = None,
                   video_grid_thw=None) -> tuple[np.ndarray, np.ndarray]:
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
  grids[image_token_id] = iter(np.asarray(image_grid_thw).reshape(-1, 3).tolist()
                               if image_grid_thw is not None else [])
  if video_token_id is not None:
    grids[video_token_id] = iter(np.asarray(video_grid_thw).reshape(-1, 3).tolist()
                                 if video_grid_thw is not None else [])
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
          raise ValueError(f"row {row}: more image/video token runs than entries in the grid "
                           "array") from None
        lt, lh, lw = gt, gh // spatial_merge_size, gw // spatial_merge_size
        if lt * lh * lw != end - start:
          raise ValueError(f"row {row}: an image run of {end - start} tokens does not match its "
                           f"grid {gt}x{gh}x{gw} (expects {lt * lh * lw} tokens after merging)")
        tt, hh, ww = np.meshgrid(np.arange(lt), np.arange(lh), np.arange(lw), indexing="ij")
        chunks.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + current)
        current += max(gh, gw) // spatial_merge_size
    if chunks:
      positions = np.concatenate(chunks, axis=1)
      position_ids[:, row, mask[row]] = positions
      deltas[row] = positions.max() + 1 - len(ids)
  return position_ids, deltas


# ---- vision: 2-D RoPE and window attention ---------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionMetadata:
  """Everything the vision tower needs besides pixels, for N patches of a set of images.

  position_ids [N, 2] (h, w) in processor patch order; window_index [N / merge^2]: the order in
  which merged units enter the blocks (identity without windows); full_segments and
  window_segments [N]: attention segment ids in that order (full = one per frame, window = one
  per window). Families with learned position embeddings resampled to each grid (Qwen3-VL) also
  set interp_indices and interp_weights [N, taps]: each patch's embedding is the weighted sum of
  those table rows; None elsewhere.
  """
  position_ids: np.ndarray
  window_index: np.ndarray
  full_segments: np.ndarray
  window_segments: np.ndarray
  interp_indices: np.ndarray | None = None
  interp_weights: np.ndarray | None = None

  def as_arrays(self) -> "VisionMetadata":
    """Device copies, to pass through `jax.jit`."""
    return jax.tree.map(jnp.asarray, self)


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


def _segments_from_lengths(lengths) -> np.ndarray:
  lengths = np.asarray(lengths, np.int64)
  return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def vision_metadata(grid_thw, *, spatial_merge_size: int, patch_size: int,
                    window_size: int = 0) -> VisionMetadata:
  """Window permutation and attention segments as transformers' `get_vision_window_index`.

  With `window_size` 0 there are no windows (Qwen3-VL): identity order, window segments equal
  to the full-attention ones.
  """
  grid = np.asarray(grid_thw).reshape(-1, 3).astype(np.int64)
  merge = spatial_merge_size
  unit = merge * merge
  full = _segments_from_lengths(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))
  n_units = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum()) // unit
  if not window_size:
    return VisionMetadata(vision_position_ids(grid, merge), np.arange(n_units, dtype=np.int32), full,
                          full)
  win = window_size // merge // patch_size
  if win <= 0:
    raise ValueError(f"window_size {window_size} is smaller than one merged patch "
                     f"({merge * patch_size} pixels)")
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
  return VisionMetadata(vision_position_ids(grid, merge), window_index, full,
                        _segments_from_lengths(lengths))


def vision_cos_sin(position_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """position_ids [N, 2] -> cos, sin [N, head_dim] (float32): h frequencies then w, repeated."""
  inv = jnp.asarray(inv_frequencies(head_dim // 2, theta))
  freqs = position_ids.astype(jnp.float32)[..., None] * inv         # [N, 2, D/4]
  freqs = jnp.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)      # [N, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)
