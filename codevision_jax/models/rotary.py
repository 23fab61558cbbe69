"""Rotary position embeddings: 2-D vision RoPE and multimodal RoPE (M-RoPE), as pure jnp.

The position ids they take are computed on the host from the image grids (`models.prepare`).
"""

from __future__ import annotations

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
    axis[offset : mrope_section[dim] * 3 : 3] = dim
  return axis


def mrope_cos_sin(
  position_ids: jax.Array, inv_freq: np.ndarray, axis_of_freq: np.ndarray, dtype
) -> tuple[jax.Array, jax.Array]:
  """position_ids [3, B, T] -> cos, sin [B, T, head_dim] in `dtype`."""
  pos = jnp.moveaxis(position_ids.astype(jnp.float32), 0, -1)  # [B, T, 3]
  pos = jnp.take(pos, jnp.asarray(axis_of_freq), axis=-1)  # [B, T, D/2]
  freqs = pos * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


# ---- vision: 2-D RoPE -------------------------------------------------------------------------


def vision_cos_sin(position_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """position_ids [N, 2] -> cos, sin [N, head_dim] (float32): h frequencies then w, repeated."""
  inv = jnp.asarray(inv_frequencies(head_dim // 2, theta))
  freqs = position_ids.astype(jnp.float32)[..., None] * inv  # [N, 2, D/4]
  freqs = jnp.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)  # [N, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)
