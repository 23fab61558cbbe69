"""Vision-tower pieces shared by the Qwen-VL families: patch embedding, attention, blocks.

All patches of all images of a batch travel together as one sequence [N, C*T*P*P], as in
transformers; which patches may attend to which is given by segment ids (one segment per frame
for full attention, one per window for windowed attention).

Segments are contiguous runs, so a patch's segment lies within `span` patches of it when no run
is longer than `span`. `segment_attention` uses that: each block of queries attends to the band
of keys around it (static slices, no gather), so the cost grows with N x span instead of N^2
(8,192 patches of 1,024-patch images: 2,176 keys per query instead of 8,192; 64-patch windows:
192), and the scores of a microbatch no longer take N^2 memory. Within the band the segment mask
applies as before, so the result is the dense one.

On the "cudnn" backend the segments go to cuDNN as they are, through its packed layout (the
offsets and lengths of each segment: `attention.segment_mask`), without a band or a mask array,
when their number is known statically (`Segments.count`: the host-side call, whose metadata is
numpy). Without a count (metadata traced under jit) or with 32-bit inputs, the band runs on
"xla", said once per process.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from codevision_jax.models import attention, rotary
from codevision_jax.models.config import VisionConfig
from codevision_jax.models.layers import Linear


class PatchEmbed(nnx.Module):
  """The Conv3d patch embedding as a matmul over flattened (C, T, P, P) patches.

  Its `proj.kernel` [C*T*P*P, hidden] is HF's Conv3d weight [hidden, C, T, P, P] flattened and
  transposed; a stride-equals-kernel convolution is exactly this product.
  """

  def __init__(self, cfg: VisionConfig, *, bias: bool, rngs: nnx.Rngs, param_dtype):
    patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size
    self.proj = Linear(
      patch_dim, cfg.hidden_size, bias=bias, axes=("patch", "embed"), rngs=rngs, param_dtype=param_dtype
    )

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    return self.proj(pixel_values.astype(self.proj.kernel.dtype))


@struct.dataclass
class Segments:
  """Attention segment ids [N] (contiguous runs), a static bound on the runs that must be exact
  (`VisionMetadata.full_span` / `window_span`; 0: none, attention over all patches) and a static
  bound on the number of runs (0: none known; cuDNN's packed layout needs one)."""

  ids: jax.Array
  span: int = struct.field(pytree_node=False, default=0)
  count: int = struct.field(pytree_node=False, default=0)

  @classmethod
  def of(cls, ids, span: int = 0) -> "Segments":
    """Segments of ids [N] (numpy, or an array), counting the runs when the ids are concrete."""
    return cls(jnp.asarray(ids), span, run_count(ids))


def run_count(ids) -> int:
  """The number of runs of equal values in ids [N] when they are concrete (numpy, or a committed
  array outside a trace); 0 for a tracer."""
  if isinstance(ids, jax.core.Tracer):
    return 0
  ids = np.asarray(ids)
  return int(len(ids) and 1 + np.count_nonzero(ids[1:] != ids[:-1]))


def band_geometry(n: int, span: int) -> tuple[int, int] | None:
  """(query block, key blocks on each side) of the banded attention of `n` patches whose runs
  are at most `span` long; None when the band would not be narrower than all `n` patches."""
  if span <= 0:
    return None
  block = min(span, 128)
  side = math.ceil(span / block)
  if (2 * side + 1) * block >= n:
    return None
  return block, side


def segment_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, segments: Segments, *, scale: float, backend: str = "xla"
) -> jax.Array:
  """Attention of each patch to the patches of its segment; q, k, v [N, H, D] -> [N, H, D].

  With a span (see `band_geometry`), queries go in blocks of `block` and each block attends to
  `2 * side + 1` blocks of keys centred on it; exact for runs up to `span` long."""
  n = q.shape[0]
  ids = segments.ids
  if backend == "cudnn":
    if segments.count and attention.cudnn_takes(q.dtype) and attention.packed_layout_supported():
      form = attention.segment_mask(ids[None], max_segments=segments.count)
      return attention.dot_product_attention(q[None], k[None], v[None], mask=form, scale=scale, backend="cudnn")[0]
    attention.cudnn_fallback(_why_not_cudnn(segments, q.dtype))
    backend = "xla"
  geometry = band_geometry(n, segments.span)
  if geometry is None:  # The form: xla builds the dense mask of it, splash takes the ids.
    return attention.dot_product_attention(
      q[None], k[None], v[None], mask=attention.segment_mask(ids[None]), scale=scale, backend=backend
    )[0]
  block, side = geometry
  blocks = -(-n // block)
  pad = blocks * block - n
  # Padding queries form their own segment (-1); the margins' keys (-2) match no query.
  q_ids = jnp.pad(ids, (0, pad), constant_values=-1).reshape(blocks, block)
  margin = side * block
  k_ids = jnp.pad(jnp.pad(ids, (0, pad), constant_values=-1), margin, constant_values=-2)

  def band(x):  # [N + pad + 2 margin, ...] -> [blocks, (2 side + 1) block, ...]
    x = x.reshape(blocks + 2 * side, block, *x.shape[1:])
    return jnp.concatenate([x[j : j + blocks] for j in range(2 * side + 1)], axis=1)

  def padded(x):
    return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))

  kv_pad = ((margin, margin),) + ((0, 0),) * (k.ndim - 1)
  kb, vb = band(jnp.pad(padded(k), kv_pad)), band(jnp.pad(padded(v), kv_pad))
  mask = (q_ids[:, :, None] == band(k_ids)[:, None, :])[:, None]  # [blocks, 1, block, band]
  out = attention.dot_product_attention(
    padded(q).reshape(blocks, block, *q.shape[1:]), kb, vb, mask=mask, scale=scale, backend=backend
  )
  return out.reshape(blocks * block, *q.shape[1:])[:n]


def _why_not_cudnn(segments: Segments, dtype) -> str:
  if not attention.cudnn_takes(dtype):
    return f"vision segments in {jnp.dtype(dtype).name} (the fused kernel takes 16-bit inputs)"
  if not segments.count:
    return "vision segments without a static count (metadata traced under jit): the band of vision.segment_attention"
  return "vision segments need cuDNN's packed layout, which needs a Hopper or newer GPU"


class VisionAttention(nnx.Module):
  """Bidirectional attention with a fused qkv projection and 2-D RoPE, within segments."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.head_dim
    self.backend = backend
    self.qkv = Linear(
      cfg.hidden_size, 3 * cfg.hidden_size, bias=True, axes=("embed", "qkv"), rngs=rngs, param_dtype=param_dtype
    )
    self.proj = Linear(
      cfg.hidden_size, cfg.hidden_size, bias=True, axes=("heads", "embed"), rngs=rngs, param_dtype=param_dtype
    )

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: Segments) -> jax.Array:
    n = x.shape[0]
    qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    dtype = q.dtype
    # RoPE in float32, as transformers' apply_rotary_pos_emb_vision.
    q = rotary.apply_rotary(q.astype(jnp.float32), cos[:, None], sin[:, None]).astype(dtype)
    k = rotary.apply_rotary(k.astype(jnp.float32), cos[:, None], sin[:, None]).astype(dtype)
    out = segment_attention(q, k, v, segments, scale=self.head_dim**-0.5, backend=self.backend)
    return self.proj(out.reshape(n, -1))


class VisionBlock(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

  def __init__(self, norm1, norm2, attn: VisionAttention, mlp):
    self.norm1 = norm1
    self.norm2 = norm2
    self.attn = attn
    self.mlp = mlp

  def __call__(self, x, cos, sin, segments):
    x = x + self.attn(self.norm1(x), cos, sin, segments)
    return x + self.mlp(self.norm2(x))


def permute_units(x: jax.Array, order: jax.Array, unit: int) -> jax.Array:
  """Reorders [N, ...] rows in groups of `unit` (merged 2x2 patches) by `order`."""
  n = x.shape[0]
  return x.reshape(n // unit, unit, *x.shape[1:])[order].reshape(x.shape)
