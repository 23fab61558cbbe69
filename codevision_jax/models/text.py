"""The language decoder shared by Qwen2.5-VL (q/k/v biases) and Qwen3-VL (per-head q/k RMSNorm).

Inputs are embeddings (the caller has already put image features in place of image tokens);
positions are 3-D M-RoPE ids [3, B, T]. `kv_cache` is an optional dict per layer with static-shape
key/value buffers {"k": [B, K, S, D], "v": ...} (kv heads before entries, so that a decode step
reads them without a transpose; `init_kv_cache`), used by the sampler: the T new tokens' keys and
values are written at entries `cache_index[b]`, `cache_index[b] + 1`, ... of row b (each row has
its own write position), and the mask [B, 1, T, S] says which entries each query sees; a mask
over fewer entries than the cache holds means attention reads only those first S entries (the
filled prefix). Training and scoring pass no cache.
A paged cache (`paged_kv`: pages shared by all rows) comes with a `paged_kv.PagedIndex` as
`cache_index`: the new entries go where it says and each row attends over its table's pages.

With `scan_layers` the decoder layers are one `DecoderLayer` whose parameters carry a leading
layer axis [L, ...] (logical axis "layers", replicated), run by `jax.lax.scan`: XLA compiles one
layer whatever the depth, with the same numerics. Its cache is stacked too: {"k": [L, B, K, S, D],
"v": ...} (`init_kv_cache` gives the form a model takes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from codevision_jax.models import attention, paged_kv, rotary
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
    if isinstance(cache_index, paged_kv.PagedIndex):  # A paged cache: write into pages, attend
      cache = paged_kv.write(cache, k, v, cache_index)  # over the gathered pages of each row.
      k, v = paged_kv.gather(cache, cache_index.table)
      out = attention.dot_product_attention(
        q, k, v, mask=mask, scale=self.head_dim**-0.5, backend="xla", kv_layout="bksd"
      )
      return self.o_proj(out.reshape(b, t, -1)), cache
    if cache is not None:  # Row r's T new entries go at cache_index[r], cache_index[r] + 1, ...
      entries = cache_index[:, None] + jnp.arange(t)
      rows = jnp.arange(b)[:, None]
      kw = dict(unique_indices=True, indices_are_sorted=True)
      k = cache["k"].at[rows, :, entries].set(stored(k, cache["k"].dtype), **kw)
      v = cache["v"].at[rows, :, entries].set(stored(v, cache["v"].dtype), **kw)
      cache = {"k": k, "v": v}
      span = mask.shape[-1]  # A mask over the first entries only: attend over those (the filled
      if span < k.shape[2]:  # prefix the decode engine passes), not the whole capacity.
        k, v = k[:, :, :span], v[:, :, :span]
    out = attention.dot_product_attention(
      q, k, v, mask=mask, scale=self.head_dim**-0.5, backend=self.backend, kv_layout="bskd" if cache is None else "bksd"
    )
    return self.o_proj(out.reshape(b, t, -1)), cache


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla"):
    self.self_attn = TextAttention(cfg, rngs=rngs, param_dtype=param_dtype, backend=backend)
    self.mlp = GatedMLP(
      cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, bias=False, rngs=rngs, param_dtype=param_dtype
    )
    self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)

  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, cache


class TextModel(nnx.Module):
  """embed_tokens, layers, norm: HF's `model.language_model`."""

  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype, backend: str = "xla", scan_layers: bool = False):
    self.config = cfg
    self.scan_layers = scan_layers
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
    if scan_layers:
      self.layers = stacked_layers(cfg, rngs.params(), param_dtype=param_dtype, backend=backend)
    else:
      self.layers = nnx.List(
        [DecoderLayer(cfg, rngs=rngs, param_dtype=param_dtype, backend=backend) for _ in range(cfg.num_hidden_layers)]
      )
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)

  def __call__(self, embeds, position_ids, mask, *, kv_cache=None, cache_index=None, deepstack=None):
    """embeds [B, T, H]; position_ids [3, B, T]; mask broadcastable to [B, 1, T, S].

    `deepstack`: optional (visual_mask [B, T], [features [B, T, H] per layer]) added to the
    hidden states after each of the first layers (Qwen3-VL).
    """
    cfg = self.config
    inv_freq = rotary.inv_frequencies(cfg.resolved_head_dim, cfg.rope_theta)
    axis_of_freq = rotary.mrope_axis_of_frequency(cfg.mrope_section, cfg.mrope_interleaved)
    cos, sin = rotary.mrope_cos_sin(position_ids, inv_freq, axis_of_freq, embeds.dtype)
    if self.scan_layers:
      x, new_cache = _run_scanned(self.layers, embeds, cos, sin, mask, kv_cache, cache_index, deepstack)
      return self.norm(x), new_cache
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


def stacked_layers(cfg: TextConfig, key: jax.Array, *, param_dtype, backend: str = "xla"):
  """`cfg.num_hidden_layers` decoder layers as one `DecoderLayer` whose parameters are stacked
  along a leading axis (logical name "layers"), layer i initialised from the i-th split of `key`
  (Flax NNX's scan-over-layers construction: `nnx.vmap` over split keys)."""

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(layer_key):
    return DecoderLayer(cfg, rngs=nnx.Rngs(layer_key), param_dtype=param_dtype, backend=backend)

  return make(jax.random.split(key, cfg.num_hidden_layers))


def _run_scanned(layers: DecoderLayer, x, cos, sin, mask, kv_cache, cache_index, deepstack):
  """The stacked `layers` over hidden states x [B, T, H] with `jax.lax.scan`: one compiled layer.

  The stacked cache (when given) is carried and layer i's slice is replaced in place, so that a
  decode step holds one cache. DeepStack features (for the first len(features) layers) are
  stacked [n, B, T, H] and layer i adds row min(i, n - 1) where i < n, zeros elsewhere: exactly
  the unscanned sum. Returns the hidden states and the new cache (None without one).
  """
  graphdef, state = nnx.split(layers)
  num_layers = jax.tree.leaves(state)[0].shape[0]
  if deepstack is not None:
    visual_mask, features = deepstack
    features = jnp.stack([f.astype(x.dtype) for f in features])

  def body(carry, xs):
    x, cache = carry
    layer_state, i = xs
    layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
    x, layer_cache = nnx.merge(graphdef, layer_state)(x, cos, sin, mask, layer_cache, cache_index)
    if cache is not None:
      cache = jax.tree.map(lambda c, new: jax.lax.dynamic_update_index_in_dim(c, new, i, 0), cache, layer_cache)
    if deepstack is not None:
      n = features.shape[0]
      row = jax.lax.dynamic_index_in_dim(features, jnp.minimum(i, n - 1), 0, keepdims=False)
      x = x + jnp.where(visual_mask[..., None] & (i < n), row, 0)
    return (x, cache), None

  (x, cache), _ = jax.lax.scan(body, (x, kv_cache), (state, jnp.arange(num_layers)))
  return x, cache


def init_kv_cache(
  model_or_cfg: TextModel | TextConfig, batch: int, length: int, dtype, *, stacked: bool | None = None
) -> list[dict] | dict:
  """An empty cache of zeros for `model_or_cfg` (a `TextModel`, or a config with `stacked`):
  per layer {"k", "v"} [batch, kv_heads, length, head_dim], or for a scanned model (`stacked`)
  one {"k", "v"} [layers, batch, kv_heads, length, head_dim]."""
  if isinstance(model_or_cfg, TextModel):
    cfg = model_or_cfg.config
    stacked = model_or_cfg.scan_layers if stacked is None else stacked
  else:
    cfg = model_or_cfg
  shape = (batch, cfg.num_key_value_heads, length, cfg.resolved_head_dim)
  if stacked:
    shape = (cfg.num_hidden_layers,) + shape
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_hidden_layers)]


def stored(x: jax.Array, dtype) -> jax.Array:
  """`x` as a cache of `dtype` holds it. A wider cache (the decode engine's float32 copy of a
  bfloat16 one, `DecodeEngine.round_upcast`) holds it rounded to its own dtype, as a cache of
  that dtype would: XLA may compute `x` wider and drop a conversion pair, but not this rounding."""
  if jnp.dtype(dtype).itemsize > jnp.dtype(x.dtype).itemsize:
    f = jnp.finfo(x.dtype)
    return jax.lax.reduce_precision(x.astype(dtype), exponent_bits=f.nexp, mantissa_bits=f.nmant)
  return x.astype(dtype)


def cache_slot_axis(cache: list[dict] | dict) -> int:
  """The batch (slot) axis of a cache's arrays: 0 per layer, 1 when stacked."""
  return 1 if isinstance(cache, dict) else 0


def cache_entries(cache: list[dict] | dict) -> int:
  """The number of entries S (the length) of a cache in either form."""
  return jax.tree.leaves(cache)[0].shape[-2]


def causal_mask(attention_mask: jax.Array | None, batch: int, length: int) -> jax.Array:
  """[B, 1, T, T] boolean: causal, and padding keys masked out. `attention_mask` holds 0 on
  padding and segment ids elsewhere (1 without packing; 1, 2, ... for the conversations packed in
  a row): a token sees the earlier tokens of its own segment only (padding queries see every
  earlier token, as without packing; their outputs are never used)."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if attention_mask is None:
    return jnp.broadcast_to(causal, (batch, 1, length, length))
  seg = attention_mask.astype(jnp.int32)
  same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, :, None] == 0)
  return causal & (seg > 0)[:, None, None, :] & same[:, None]
