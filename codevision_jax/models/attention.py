"""The one attention function every module calls, with a backend choice.

Shapes: q [B, T, H, D], k and v [B, S, K, D] with H a multiple of K (grouped-query attention),
`mask` boolean, broadcastable to [B, 1, T, S] (True = may attend). Returns [B, T, H, D].

Backends:
* "xla" (default, all platforms): einsum + float32 softmax, numerically what transformers'
  eager attention computes. Fully masked rows (left padding) give a uniform average, as there.
* "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused kernel on NVIDIA GPUs.
* "splash": reserved for the TPU Pallas kernel; selecting it raises until it lands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("xla", "cudnn")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None,
                          scale: float, backend: str = "xla") -> jax.Array:
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  if h % kv_heads:
    raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
  if backend == "xla":
    return _xla_attention(q, k, v, mask, scale)
  if backend == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
  raise ValueError(f"attention backend {backend!r} is not available; choose one of {BACKENDS}")


def _xla_attention(q, k, v, mask, scale):
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  groups = h // kv_heads
  q = q.reshape(b, t, kv_heads, groups, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(scale, q.dtype)
  scores = scores.astype(jnp.float32)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, 1, t, k.shape[1]))[:, :, None]  # [B, 1, 1, T, S]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, h, d)
