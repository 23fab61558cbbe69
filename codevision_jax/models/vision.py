"""Vision-tower pieces shared by the Qwen-VL families: patch embedding, attention, blocks.

All patches of all images of a batch travel together as one sequence [N, C*T*P*P], as in
transformers; which patches may attend to which is given by segment ids (one segment per frame
for full attention, one per window for windowed attention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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
    self.proj = Linear(patch_dim, cfg.hidden_size, bias=bias, axes=("patch", "embed"), rngs=rngs,
                       param_dtype=param_dtype)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    return self.proj(pixel_values.astype(self.proj.kernel.dtype))


class VisionAttention(nnx.Module):
  """Bidirectional attention with a fused qkv projection and 2-D RoPE, within segments."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.head_dim
    self.backend = backend
    self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True, axes=("embed", "qkv"), rngs=rngs,
                      param_dtype=param_dtype)
    self.proj = Linear(cfg.hidden_size, cfg.hidden_size, bias=True, axes=("heads", "embed"), rngs=rngs,
                       param_dtype=param_dtype)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: jax.Array) -> jax.Array:
    n = x.shape[0]
    qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    dtype = q.dtype
    # RoPE in float32, as transformers' apply_rotary_pos_emb_vision.
    q = rotary.apply_rotary(q.astype(jnp.float32), cos[:, None], sin[:, None]).astype(dtype)
    k = rotary.apply_rotary(k.astype(jnp.float32), cos[:, None], sin[:, None]).astype(dtype)
    mask = (segments[:, None] == segments[None, :])[None, None]
    out = attention.dot_product_attention(q[None], k[None], v[None], mask=mask,
                                          scale=self.head_dim ** -0.5, backend=self.backend)
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
