"""Qwen2.5-VL: the vision tower (windowed attention, RMSNorm, gated SiLU MLP, 2x2 merger) over the
shared decoder. Module and parameter names mirror transformers' `Qwen2_5_VLForConditionalGeneration`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from codevision_jax.models import rotary
from codevision_jax.models.config import VisionConfig
from codevision_jax.models.layers import GatedMLP, Linear, RMSNorm
from codevision_jax.models.prepare import VisionMetadata
from codevision_jax.models.vision import PatchEmbed, Segments, VisionAttention, VisionBlock, permute_units
from codevision_jax.models.vlm import VisionLanguageModel


class PatchMerger(nnx.Module):
  """RMSNorm each patch, concatenate 2x2 neighbours, then Linear-GELU-Linear (`mlp.0`, `mlp.2`)."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype):
    self.unit_dim = cfg.hidden_size * cfg.spatial_merge_size**2
    self.ln_q = RMSNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype)
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    self.mlp = nnx.List(
      [
        Linear(self.unit_dim, self.unit_dim, bias=True, axes=("embed", "mlp"), **kw),
        Linear(self.unit_dim, cfg.out_hidden_size, bias=True, axes=("mlp", "embed"), **kw),
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.ln_q(x).reshape(-1, self.unit_dim)
    return self.mlp[1](jax.nn.gelu(self.mlp[0](x), approximate=False))


class Qwen2_5_VisionTransformer(nnx.Module):
  """HF's `model.visual`."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.config = cfg
    self.patch_embed = PatchEmbed(cfg, bias=False, rngs=rngs, param_dtype=param_dtype)
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    self.blocks = nnx.List(
      [
        VisionBlock(
          RMSNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype),
          RMSNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype),
          VisionAttention(cfg, backend=backend, **kw),
          GatedMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, bias=True, **kw),
        )
        for _ in range(cfg.depth)
      ]
    )
    self.merger = PatchMerger(cfg, **kw)

  def __call__(self, pixel_values: jax.Array, meta: VisionMetadata) -> tuple[jax.Array, list]:
    """pixel_values [N, C*T*P*P] -> merged features [N / merge^2, out_hidden] (and no DeepStack)."""
    c = self.config
    unit = c.spatial_merge_size**2
    x = self.patch_embed(pixel_values)
    order = jnp.asarray(meta.window_index)
    x = permute_units(x, order, unit)
    cos, sin = rotary.vision_cos_sin(jnp.asarray(meta.position_ids), c.head_dim, c.rope_theta)
    cos, sin = permute_units(cos, order, unit), permute_units(sin, order, unit)
    full = Segments.of(meta.full_segments, meta.full_span)  # Counted when the metadata is numpy.
    window = Segments.of(meta.window_segments, meta.window_span)
    for i, block in enumerate(self.blocks):
      x = block(x, cos, sin, full if i in c.fullatt_block_indexes else window)
    merged = self.merger(x)
    return merged[jnp.argsort(order)], []


class Qwen2_5_VLForConditionalGeneration(VisionLanguageModel):
  vision_class = Qwen2_5_VisionTransformer
