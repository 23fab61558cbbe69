"""The one attention function every module calls, with a backend choice.

Shapes: q [B, T, H, D], k and v [B, S, K, D] with H a multiple of K (grouped-query attention),
or [B, K, S, D] with `kv_layout="bksd"` (the sampler's key/value cache: a decode step reads it
without a transpose), `mask` boolean, broadcastable to [B, 1, T, S] (True = may attend).
Returns [B, T, H, D].

Backends:
* "xla" (default, all platforms): matmuls + float32 softmax, numerically what transformers'
  eager attention computes. Fully masked rows (left padding) give a uniform average, as there.
* "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused kernel on NVIDIA GPUs.
* "splash": reserved for the TPU Pallas kernel; selecting it raises until it lands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("xla", "cudnn")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None,
                          scale: float, backend: str = "xla", kv_layout: str = "bskd") -> jax.Array:
  b, t, h, d = q.shape
  if kv_layout not in ("bskd", "bksd"):
    raise ValueError(f"kv_layout {kv_layout!r}: expected 'bskd' or 'bksd'")
  kv_heads = k.shape[2] if kv_layout == "bskd" else k.shape[1]
  if h % kv_heads:
    raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
  if backend == "xla":
    return _xla_attention(q, k, v, mask, scale, kv_layout)
  if kv_layout == "bksd":
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
  if backend == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
  raise ValueError(f"attention backend {backend!r} is not available; choose one of {BACKENDS}")


def _xla_attention(q, k, v, mask, scale, kv_layout="bskd"):
  b, t, h, d = q.shape
  if kv_layout == "bskd":
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # -> [B, K, S, D]
  kv_heads, s = k.shape[1], k.shape[2]
  groups = h // kv_heads
  # Heads leading, as [B, K, G*T, D] x [B, K, D, S]: batched matmuls with leading batch dims run
  # 2-3x faster on XLA's CPU backend than the same einsums with interleaved batch dims.
  q = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * t, d)
  scores = jnp.matmul(q, k.swapaxes(-1, -2)) * jnp.asarray(scale, q.dtype)
  scores = scores.astype(jnp.float32).reshape(b, kv_heads, groups, t, s)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, 1, t, s))[:, :, None]  # [B, 1, 1, T, S]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv_heads, groups * t, s)
  out = jnp.matmul(probs, v)  # [B, K, G*T, D]
  return out.reshape(b, kv_heads, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
