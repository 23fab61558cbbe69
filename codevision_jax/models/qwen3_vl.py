"""Qwen3-VL (dense): the vision tower (learned, resampled position embeddings, LayerNorm, GELU MLP,
no windows, DeepStack mergers) over the shared decoder (run with per-head q/k RMSNorm and
interleaved M-RoPE). Module and parameter names mirror transformers' `Qwen3VLForConditionalGeneration`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from codevision_jax.models import rotary
from codevision_jax.models.config import VisionConfig
from codevision_jax.models.layers import LayerNorm, Linear, PlainMLP, _normal, param
from codevision_jax.models.prepare import VisionMetadata
from codevision_jax.models.vision import PatchEmbed, Segments, VisionAttention, VisionBlock
from codevision_jax.models.vlm import VisionLanguageModel


class PositionEmbedding(nnx.Module):
  """The learned [num_position_embeddings, hidden] table (`pos_embed.weight`)."""

  def __init__(self, num: int, features: int, *, rngs: nnx.Rngs, param_dtype):
    self.weight = param(_normal(rngs, (num, features), param_dtype), (None, "embed"))

  def __call__(self, indices: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted sum of table rows: indices and weights [N, taps] -> [N, hidden] float32."""
    rows = jnp.take(self.weight[...], indices, axis=0).astype(jnp.float32)
    return jnp.sum(rows * weights.astype(jnp.float32)[..., None], axis=1)


class PatchMerger(nnx.Module):
  """LayerNorm, concatenate 2x2 neighbours, Linear-GELU-Linear (`linear_fc1`, `linear_fc2`).

  The final merger normalises each patch (`norm` over hidden); DeepStack mergers normalise the
  concatenation (`use_postshuffle_norm`, `norm` over 4 * hidden).
  """

  def __init__(self, cfg: VisionConfig, *, postshuffle_norm: bool, rngs: nnx.Rngs, param_dtype):
    self.unit_dim = cfg.hidden_size * cfg.spatial_merge_size**2
    self.postshuffle_norm = postshuffle_norm
    self.norm = LayerNorm(self.unit_dim if postshuffle_norm else cfg.hidden_size, eps=1e-6, param_dtype=param_dtype)
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    self.linear_fc1 = Linear(self.unit_dim, self.unit_dim, bias=True, axes=("embed", "mlp"), **kw)
    self.linear_fc2 = Linear(self.unit_dim, cfg.out_hidden_size, bias=True, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.postshuffle_norm:
      x = self.norm(x.reshape(-1, self.unit_dim))
    else:
      x = self.norm(x).reshape(-1, self.unit_dim)
    return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


class Qwen3VLVisionModel(nnx.Module):
  """HF's `model.visual`."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    side = int(cfg.num_position_embeddings**0.5)
    if side * side != cfg.num_position_embeddings:
      raise ValueError(
        f"vision_config.num_position_embeddings {cfg.num_position_embeddings} is not a "
        "square; Qwen3-VL's position table is a square grid"
      )
    bad = [i for i in cfg.deepstack_visual_indexes if not 0 <= i < cfg.depth]
    if bad:
      raise ValueError(f"vision_config.deepstack_visual_indexes {bad} are outside the {cfg.depth} blocks")
    self.config = cfg
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    self.patch_embed = PatchEmbed(cfg, bias=True, **kw)
    self.pos_embed = PositionEmbedding(cfg.num_position_embeddings, cfg.hidden_size, **kw)
    self.blocks = nnx.List(
      [
        VisionBlock(
          LayerNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype),
          LayerNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype),
          VisionAttention(cfg, backend=backend, **kw),
          PlainMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, **kw),
        )
        for _ in range(cfg.depth)
      ]
    )
    self.merger = PatchMerger(cfg, postshuffle_norm=False, **kw)
    self.deepstack_merger_list = nnx.List(
      [PatchMerger(cfg, postshuffle_norm=True, **kw) for _ in cfg.deepstack_visual_indexes]
    )

  def __call__(self, pixel_values: jax.Array, meta: VisionMetadata) -> tuple[jax.Array, list]:
    """pixel_values [N, C*T*P*P] -> merged features [N / merge^2, out_hidden] and one DeepStack
    feature array of that shape per `deepstack_visual_indexes` entry."""
    c = self.config
    x = self.patch_embed(pixel_values)
    pos = self.pos_embed(jnp.asarray(meta.interp_indices), jnp.asarray(meta.interp_weights))
    x = x + pos.astype(x.dtype)
    cos, sin = rotary.vision_cos_sin(jnp.asarray(meta.position_ids), c.head_dim, c.rope_theta)
    segments = Segments.of(meta.full_segments, meta.full_span)  # Counted when numpy.
    deepstack = []
    for i, block in enumerate(self.blocks):
      x = block(x, cos, sin, segments)
      if i in c.deepstack_visual_indexes:
        deepstack.append(self.deepstack_merger_list[c.deepstack_visual_indexes.index(i)](x))
    return self.merger(x), deepstack


class Qwen3VLForConditionalGeneration(VisionLanguageModel):
  vision_class = Qwen3VLVisionModel
