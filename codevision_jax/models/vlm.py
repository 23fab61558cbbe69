"""The vision-language model common to all Qwen-VL families: `model.visual`, `model.language_model`,
`lm_head`, as in transformers' `*ForConditionalGeneration`.

Two entry points:

* `model(input_ids, pixel_values=..., image_grid_thw=..., attention_mask=...)`: the public call
  with transformers' processor outputs. It computes the data-dependent metadata (M-RoPE position
  ids, vision windows) on the host, then runs `forward`.
* `model.forward(input_ids, pixel_values, vision_meta, attention_mask, position_ids)`: pure array
  code, safe under `jax.jit`/`nnx.jit` with static shapes. Training and sampling call this with
  position ids and vision metadata from `models.prepare` computed by the input pipeline.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codevision_jax.models import attention, prepare as prepare_lib
from codevision_jax.models.config import VLConfig
from codevision_jax.models.layers import Linear
from codevision_jax.models.text import TextModel


class VLModel(nnx.Module):
  """HF's `model`: the vision tower and the decoder."""

  def __init__(self, visual, language_model):
    self.visual = visual
    self.language_model = language_model


def image_feature_index(is_image: jax.Array) -> jax.Array:
  """Row of the image features each token takes (-1: a text token): the k-th image token, in
  row-major order over the batch, takes row k, as transformers' masked_scatter."""
  flat = is_image.reshape(-1)
  return jnp.where(flat, jnp.cumsum(flat) - 1, -1).reshape(is_image.shape)


def place_image_features(embeds: jax.Array, image_index: jax.Array, features: jax.Array) -> jax.Array:
  """embeds [B, T, H] with features[image_index] wherever image_index >= 0."""
  rows = features.astype(embeds.dtype)[jnp.maximum(image_index, 0)]
  return jnp.where((image_index >= 0)[..., None], rows, embeds)


def _row_runs(attention_mask: np.ndarray) -> list[int]:
  """The segments (runs of one nonzero value) of each row of a host attention mask [B, T]."""
  m = attention_mask.reshape(len(attention_mask), -1)
  starts = (m != 0) & np.concatenate([np.ones_like(m[:, :1], bool), m[:, 1:] != m[:, :-1]], axis=1)
  return starts.sum(axis=1).tolist()


class VisionLanguageModel(nnx.Module):
  """Base class; a family sets `vision_class`."""

  vision_class: ClassVar[type]

  def __init__(
    self,
    config: VLConfig,
    *,
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
    attention_backend: str = "xla",
    scan_layers: bool = False,
  ):
    self.config = config
    self.attention_backend = attention_backend
    visual = self.vision_class(config.vision, rngs=rngs, param_dtype=param_dtype, backend=attention_backend)
    language_model = TextModel(
      config.text, rngs=rngs, param_dtype=param_dtype, backend=attention_backend, scan_layers=scan_layers
    )
    self.model = VLModel(visual, language_model)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = Linear(
        config.text.hidden_size,
        config.text.vocab_size,
        bias=False,
        axes=("embed", "vocab"),
        rngs=rngs,
        param_dtype=param_dtype,
      )

  @property
  def scan_layers(self) -> bool:
    """Whether the decoder layers are stacked and run by a scan (its KV cache is stacked too)."""
    return self.model.language_model.scan_layers

  # ---- host-side preparation --------------------------------------------------------------

  def prepare(self, input_ids, image_grid_thw=None, attention_mask=None):
    """M-RoPE position ids [3, B, T] and the vision metadata (None without images), in numpy:
    `models.prepare.prepare` with this model's config."""
    return prepare_lib.prepare(self.config, input_ids, image_grid_thw, attention_mask)

  def __call__(
    self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None, position_ids=None
  ) -> jax.Array:
    """Logits [B, T, vocab] for transformers-style processor outputs."""
    if (pixel_values is None) != (image_grid_thw is None):
      raise ValueError("pixel_values and image_grid_thw must be given together")
    input_ids = np.asarray(input_ids)
    prepare_lib.check_image_tokens(self.config, input_ids, pixel_values, image_grid_thw)
    prepared_positions, meta = self.prepare(input_ids, image_grid_thw, attention_mask)
    if position_ids is None:
      position_ids = prepared_positions
    most = 0 if attention_mask is None else max(_row_runs(np.asarray(attention_mask)), default=0)
    return self.forward(
      jnp.asarray(input_ids),
      None if pixel_values is None else jnp.asarray(pixel_values),
      meta,
      None if attention_mask is None else jnp.asarray(attention_mask),
      jnp.asarray(position_ids),
      max_segments=max(most, attention.segment_bound(input_ids.shape[1])),
    )

  # ---- array code ---------------------------------------------------------------------------

  def embed(self, input_ids, pixel_values=None, vision_meta=None, image_index=None):
    """Token embeddings with image features in place, and DeepStack inputs (or None).

    `image_index` [B, T] names the feature row each token takes (-1 for text); by default the
    k-th image token takes row k. Input pipelines that pad the patches (a padding image) or
    split a batch across hosts pass it explicitly.
    """
    embeds = self.model.language_model.embed_tokens(input_ids)
    if pixel_values is None:
      return embeds, None
    features, deepstack_features = self.model.visual(pixel_values, vision_meta)
    if image_index is None:
      image_index = image_feature_index(input_ids == self.config.image_token_id)
    embeds = place_image_features(embeds, image_index, features)
    deepstack = None
    if deepstack_features:
      deepstack = (
        image_index >= 0,
        [place_image_features(jnp.zeros_like(embeds), image_index, f) for f in deepstack_features],
      )
    return embeds, deepstack

  def logits(self, hidden: jax.Array) -> jax.Array:
    if self.lm_head is None:
      return self.model.language_model.embed_tokens.attend(hidden)
    return self.lm_head(hidden)

  def forward(
    self,
    input_ids,
    pixel_values=None,
    vision_meta=None,
    attention_mask=None,
    position_ids=None,
    *,
    image_index=None,
    return_hidden: bool = False,
    max_segments: int | None = None,
  ):
    """Logits [B, T, vocab] (or the final hidden states). `max_segments` (static) bounds the
    segments of one row of `attention_mask` (padding, or sequences packed in a row) for the cudnn
    backend's packed layout (None: `attention.segment_bound(T)`, one per 512 tokens, at least 8);
    a batch over it stops with an error naming it."""
    b, t = input_ids.shape
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (3, b, t))
    embeds, deepstack = self.embed(input_ids, pixel_values, vision_meta, image_index)
    # The mask's form (causal, padding and packed segments), never the dense square: each
    # backend derives what its kernel takes, once here for all layers.
    mask = attention.text_mask(attention_mask, max_segments=max_segments).prepared(self.attention_backend, embeds.dtype)
    hidden, _ = self.model.language_model(embeds, position_ids, mask, deepstack=deepstack)
    return hidden if return_hidden else self.logits(hidden)

  # ---- incremental decoding (the sampler's API) ------------------------------------------------

  def extend(self, embeds, position_ids, mask, cache, cache_index, deepstack=None):
    """Runs the decoder over new tokens whose keys and values join `cache` (`text.init_kv_cache`).

    embeds [B, T, H] (from `embed`); position_ids [3, B, T]; mask [B, 1, T, S] over the cache's
    entries (the new ones included); cache_index [B]: where row b's new entries go. Returns the
    final hidden states [B, T, H] (`logits` turns them into logits) and the updated cache.
    """
    return self.model.language_model(
      embeds, position_ids, mask, kv_cache=cache, cache_index=cache_index, deepstack=deepstack
    )
