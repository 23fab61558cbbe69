"""The one attention function every module calls, with a backend choice.

Shapes: q [B, T, H, D], k and v [B, S, K, D] with H a multiple of K (grouped-query attention),
or [B, K, S, D] with `kv_layout="bksd"` (the sampler's key/value cache: a decode step reads it
without a transpose), `mask` boolean, broadcastable to [B, 1, T, S] (True = may attend).
Returns [B, T, H, D].

The same masking can also be said without a dense mask, which is what the Splash kernel needs:
`causal` (query i sees keys j <= i + S - T) and `segment_ids` ((q_ids [B, T], kv_ids [B, S]) int:
a query sees only keys of its own segment). A caller passes those alongside the dense `mask` (the
decoder's training path: `Masks`, which `mask` may also be), and each backend uses what it needs.

Backends (`BACKENDS`; `resolve_backend` turns "auto" into the platform's choice at model build):
* "xla" (CPU's choice, all platforms): matmuls + float32 softmax, numerically what transformers'
  eager attention computes. Fully masked rows (left padding) give a uniform average, as there.
* "cudnn" (NVIDIA GPUs' choice): `jax.nn.dot_product_attention(implementation="cudnn")`, the fused
  kernel. cuDNN takes only 16-bit inputs: float32 q/k/v use "xla", and so does a step over the
  sampler's cache (`kv_layout="bksd"`: cuDNN would need the whole cache transposed every step).
* "splash" (TPUs' choice): the Pallas Splash kernel of `jax.experimental.pallas.ops.tpu`
  (`make_splash_mqa` per key/value head, vmapped over batch and heads), with a `CausalMask` or
  `FullMask` and `SegmentIds`; sequences are padded to its block size and the head dim to 128.
  It runs where the causal/segment form is given and there is no KV cache; a decode or prefill
  step over the cache (`kv_layout="bksd"`) and a call with only a dense mask use "xla". Off TPU
  it runs in Pallas interpret mode when CVJ_SPLASH_INTERPRET=1 (tests on CPU; slow).
  Under a multi-device mesh the kernel is not partitioned by XLA (no shard_map here yet).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

BACKENDS = ("xla", "cudnn", "splash")
CHOICES = ("auto",) + BACKENDS
PLATFORM_BACKENDS = {"gpu": "cudnn", "tpu": "splash", "cpu": "xla"}
INTERPRET_ENV = "CVJ_SPLASH_INTERPRET"
_SPLASH_BLOCK = 128  # Sequence and head-dim multiple the Splash kernel tiles by.


def resolve_backend(name: str, platform: str) -> str:
  """The backend `name` means on `platform` (a JAX platform: "cpu", "gpu", "tpu"): "auto" gives
  cudnn on GPUs, splash on TPUs and xla elsewhere; any other choice is returned as it is."""
  if name not in CHOICES:
    raise ValueError(f"model.attention_backend {name!r} is not one of {CHOICES}")
  return PLATFORM_BACKENDS.get(platform, "xla") if name == "auto" else name


def splash_interpret() -> bool:
  """Whether Splash runs in Pallas interpret mode (any platform; CVJ_SPLASH_INTERPRET=1)."""
  return os.environ.get(INTERPRET_ENV, "") not in ("", "0")


@struct.dataclass
class Masks:
  """A dense mask with its causal/segment form, passed where a dense `mask` goes.

  dense: boolean broadcastable to [B, 1, T, S]; segment_ids: (q_ids [B, T], kv_ids [B, S]) int
  or None; causal: whether the dense mask includes the causal one (static)."""
  dense: jax.Array
  segment_ids: tuple | None = None
  causal: bool = struct.field(pytree_node=False, default=False)


def padding_segments(attention_mask: jax.Array) -> jax.Array:
  """Segment ids [B, T] int32 of an attention mask: its values (1 on tokens, or 1, 2, ... per
  packed sequence; 0 on padding, which then attends to padding only: no query row is empty)."""
  return attention_mask.astype(jnp.int32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask, scale: float,
                          backend: str = "xla", kv_layout: str = "bskd", causal: bool = False,
                          segment_ids: tuple | None = None) -> jax.Array:
  """Attention of q to k/v under `mask` (or a `Masks`), or `causal`/`segment_ids` alone (the
  dense mask is then built from them for xla and cudnn); see the module docstring."""
  b, t, h, d = q.shape
  if kv_layout not in ("bskd", "bksd"):
    raise ValueError(f"kv_layout {kv_layout!r}: expected 'bskd' or 'bksd'")
  if isinstance(mask, Masks):
    causal, segment_ids, mask = mask.causal, mask.segment_ids, mask.dense
  kv_heads = k.shape[2] if kv_layout == "bskd" else k.shape[1]
  if h % kv_heads:
    raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
  if backend not in BACKENDS:
    raise ValueError(f"attention backend {backend!r} is not available; choose one of {CHOICES}")
  if backend == "splash" and kv_layout == "bskd" and (mask is None or causal or segment_ids):
    return _splash_attention(q, k, v, scale, causal, segment_ids)
  if mask is None and (causal or segment_ids):
    mask = dense_mask(t, k.shape[1] if kv_layout == "bskd" else k.shape[2], causal, segment_ids)
  if backend == "cudnn" and kv_layout == "bskd" and q.dtype in (jnp.bfloat16, jnp.float16):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
  return _xla_attention(q, k, v, mask, scale, kv_layout)


def dense_mask(t: int, s: int, causal: bool, segment_ids: tuple | None) -> jax.Array:
  """The boolean mask [B or 1, 1, T, S] of the causal/segment form (causal: the last T of S)."""
  mask = jnp.ones((1, 1, t, s), bool)
  if causal:
    mask = jnp.tril(mask, k=s - t)
  if segment_ids is not None:
    q_ids, kv_ids = segment_ids
    mask = mask & (q_ids[:, None, :, None] == kv_ids[:, None, None, :])
  return mask


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


class _SplashShape(NamedTuple):
  groups: int   # query heads per key/value head
  t: int        # padded query length
  s: int        # padded key length
  causal: bool
  interpret: bool


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


@functools.lru_cache(maxsize=64)
def _splash_kernel(shape: _SplashShape):
  """The MQA Splash kernel of one key/value head: q [G, T, D], k and v [S, D]."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  mask_cls = sa.CausalMask if shape.causal else sa.FullMask
  heads = sa.MultiHeadMask([mask_cls((shape.t, shape.s)) for _ in range(shape.groups)])
  block_q = max(b for b in (512, 256, 128) if shape.t % b == 0)
  block_kv = max(b for b in (512, 256, 128) if shape.s % b == 0)
  blocks = sa.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                         block_q_dkv=block_q, block_kv_dkv=block_kv,
                         block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
  return sa.make_splash_mqa(heads, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                            interpret=shape.interpret)


def _splash_attention(q, k, v, scale, causal, segment_ids):
  """Splash over [B, T, H, D] q and [B, S, K, D] k/v: pads T and S to the block (padding gets
  segment -1, so it attends to itself only) and D to 128 (zeros leave the scores alone)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  b, t, h, d = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  if causal and t != s:
    raise ValueError(f"splash causal attention needs as many queries as keys, got {t} and {s}")
  tp, sp, dp = (_round_up(n, _SPLASH_BLOCK) for n in (t, s, d))
  if segment_ids is None:
    segment_ids = (jnp.zeros((b, t), jnp.int32), jnp.zeros((b, s), jnp.int32))
  q_ids, kv_ids = (jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, n - ids.shape[1])),
                           constant_values=-1)
                   for ids, n in zip(segment_ids, (tp, sp)))
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, h // kv_heads, d)
  q = jnp.pad(q.transpose(0, 2, 3, 1, 4), ((0, 0),) * 3 + ((0, tp - t), (0, dp - d)))
  k, v = (jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, sp - s), (0, dp - d)))
          for x in (k, v))  # [B, K, S, D]
  kernel = _splash_kernel(_SplashShape(h // kv_heads, tp, sp, bool(causal), splash_interpret()))
  per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over key/value heads
  out = jax.vmap(per_head)(q, k, v, sa.SegmentIds(q_ids, kv_ids))  # [B, K, G, T, D]
  return out[:, :, :, :t, :d].transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
