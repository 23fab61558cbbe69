"""The language decoder shared by Qwen2.5-VL (q/k/v biases) and Qwen3-VL (per-head q/k RMSNorm).

Inputs are embeddings (the caller has already put image features in place of image tokens);
positions are 3-D M-RoPE ids [3, B, T]. `kv_cache` is an optional dict per layer with static-shape
key/value buffers {"k": [B, K, S, D], "v": ...} (kv heads before entries, so that a decode step
reads them without a transpose; `init_kv_cache`), used by the sampler: the T new tokens' keys and
values are written at entries `cache_index[b]`, `cache_index[b] + 1`, ... of row b (each row has
its own write position), and the mask [B, 1, T, S] says which entries each query sees. Training
and scoring pass no cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from codevision_jax.models import attention, rotary
from codevision_jax.models.config import TextConfig
from codevision_jax.models.layers import Embed, GatedMLP, Linear, RMSNorm


class TextAttention(nnx.Module):

  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.num_heads = cfg.num_attention_heads
    self.num_kv_heads = cfg.num_key_value_heads
    self.head_dim = cfg.resolved_head_dim
    self.backend = backend
    h, d = cfg.hidden_size, self.head_dim
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    self.q_proj = Linear(h, self.num_heads * d, bias=cfg.attention_bias, axes=("embed", "heads"), **kw)
    self.k_proj = Linear(h, self.num_kv_heads * d, bias=cfg.attention_bias, axes=("embed", "kv_heads"), **kw)
    self.v_proj = Linear(h, self.num_kv_heads * d, bias=cfg.attention_bias, axes=("embed", "kv_heads"), **kw)
    self.o_proj = Linear(self.num_heads * d, h, bias=cfg.o_proj_bias, axes=("heads", "embed"), **kw)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
      self.k_norm = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = rotary.apply_rotary(q, cos[:, :, None], sin[:, :, None])
    k = rotary.apply_rotary(k, cos[:, :, None], sin[:, :, None])
    if cache is not None:  # Row r's T new entries go at cache_index[r], cache_index[r] + 1, ...
      entries = cache_index[:, None] + jnp.arange(t)
      rows = jnp.arange(b)[:, None]
      kw = dict(unique_indices=True, indices_are_sorted=True)
      k = cache["k"].at[rows, :, entries].set(k.astype(cache["k"].dtype), **kw)
      v = cache["v"].at[rows, :, entries].set(v.astype(cache["v"].dtype), **kw)
      cache = {"k": k, "v": v}
    out = attention.dot_product_attention(q, k, v, mask=mask, scale=self.head_dim ** -0.5,
                                          backend=self.backend,
                                          kv_layout="bskd" if cache is None else "bksd")
    return self.o_proj(out.reshape(b, t, -1)), cache


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.self_attn = TextAttention(cfg, rngs=rngs, param_dtype=param_dtype, backend=backend)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, bias=False, rngs=rngs,
                        param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)

  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, cache


class TextModel(nnx.Module):
  """embed_tokens, layers, norm: HF's `model.language_model`."""

  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.config = cfg
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs, param_dtype=param_dtype, backend=backend)
                            for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)

  def __call__(self, embeds, position_ids, mask, *, kv_cache=None, cache_index=None,
               deepstack=None):
    """embeds [B, T, H]; position_ids [3, B, T]; mask broadcastable to [B, 1, T, S].

    `deepstack`: optional (visual_mask [B, T], [features [B, T, H] per layer]) added to the
    hidden states after each of the first layers (Qwen3-VL).
    """
    cfg = self.config
    inv_freq = rotary.inv_frequencies(cfg.resolved_head_dim, cfg.rope_theta)
    axis_of_freq = rotary.mrope_axis_of_frequency(cfg.mrope_section, cfg.mrope_interleaved)
    cos, sin = rotary.mrope_cos_sin(position_ids, inv_freq, axis_of_freq, embeds.dtype)
    x = embeds
    new_cache = []
    for i, layer in enumerate(self.layers):
      cache = None if kv_cache is None else kv_cache[i]
      x, cache = layer(x, cos, sin, mask, cache, cache_index)
      new_cache.append(cache)
      if deepstack is not None and i < len(deepstack[1]):
        visual_mask, features = deepstack
        x = x + jnp.where(visual_mask[..., None], features[i].astype(x.dtype), 0)
    return self.norm(x), (new_cache if kv_cache is not None else None)


def init_kv_cache(cfg: TextConfig, batch: int, length: int, dtype) -> list[dict]:
  """An empty cache: per layer {"k", "v"} of zeros [batch, kv_heads, length, head_dim]."""
  shape = (batch, cfg.num_key_value_heads, length, cfg.resolved_head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(cfg.num_hidden_layers)]


def causal_mask(attention_mask: jax.Array | None, batch: int, length: int) -> jax.Array:
  """[B, 1, T, T] boolean: causal, and padding keys masked out."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if attention_mask is None:
    return jnp.broadcast_to(causal, (batch, 1, length, length))
  return causal & attention_mask.astype(bool)[:, None, None, :]
