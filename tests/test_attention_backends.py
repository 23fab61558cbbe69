"""Attention backends: "auto" resolves per platform, impossible choices fail at start naming
`model.attention_backend`, and the Splash kernel (Pallas interpret mode on CPU) gives the XLA
path's outputs and gradients, alone and through the whole tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codevision_jax.models import attention, build_model, presets
from codevision_jax.models.text import causal_mask
from codevision_jax.runtime import run_setup
from configs import tiny_sft


@pytest.fixture
def interpret(monkeypatch):
  monkeypatch.setenv(attention.INTERPRET_ENV, "1")


def _qkv(b, t, h, kv, d, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (
    jax.random.normal(ks[0], (b, t, h, d)),
    jax.random.normal(ks[1], (b, t, kv, d)),
    jax.random.normal(ks[2], (b, t, kv, d)),
  )


def test_resolve_backend_picks_per_platform_and_keeps_explicit_choices():
  assert [attention.resolve_backend("auto", p) for p in ("gpu", "tpu", "cpu")] == ["cudnn", "splash", "xla"]
  assert attention.resolve_backend("xla", "gpu") == "xla"
  assert attention.resolve_backend("splash", "cpu") == "splash"
  with pytest.raises(ValueError, match="model.attention_backend 'flash' is not one of"):
    attention.resolve_backend("flash", "cpu")


def test_auto_in_a_config_resolves_to_xla_on_cpu():
  c = tiny_sft.get_config()
  assert c.model.attention_backend == "auto"
  assert run_setup.attention_backend(c.model) == "xla"
  run_setup.check_platform(c.model)
  line = run_setup.describe(run_setup.make_mesh(c.mesh), c.model)
  assert "attention backend xla (auto on cpu)" in line


def test_splash_causal_with_padding_and_grouped_heads_equals_xla(interpret):
  b, t = 2, 200
  q, k, v = _qkv(b, t, 4, 2, 64)
  am = jnp.asarray([[1] * t, [0] * 30 + [1] * 120 + [0] * 50])  # Left and right padding.
  seg = attention.padding_segments(am)
  masks = attention.Masks(causal_mask(am, b, t), causal=True, segment_ids=(seg, seg))
  real = am[:, :, None, None]  # Padding rows differ (splash: they see padding); never used.

  def loss(q, k, v, backend):
    out = attention.dot_product_attention(q, k, v, mask=masks, scale=0.125, backend=backend)
    return jnp.sum(out * real * jnp.cos(jnp.arange(64.0))), out

  (_, splash), g_splash = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, "splash")
  (_, xla), g_xla = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, "xla")
  np.testing.assert_allclose(splash * real, xla * real, atol=2e-5)
  same = (seg[:, :, None] == seg[:, None, :]) & jnp.tril(jnp.ones((t, t), bool))
  np.testing.assert_array_equal(attention.dense_mask(t, t, True, (seg, seg)), same[:, None])
  for a, b_ in zip(g_splash, g_xla):
    np.testing.assert_allclose(a, b_, atol=5e-5)


def test_splash_bidirectional_segments_like_the_vision_tower_equals_xla(interpret):
  n = 256
  q, k, v = _qkv(1, n, 2, 2, 80, seed=1)  # Qwen2.5-VL's vision head_dim (80): padded to 128.
  ids = jnp.asarray(np.repeat([0, 1, 2, 3], [64, 100, 36, 56]))[None]
  dense = (ids[:, :, None] == ids[:, None, :])[:, None]
  splash = attention.dot_product_attention(q, k, v, mask=None, scale=80**-0.5, backend="splash", segment_ids=(ids, ids))
  xla = attention.dot_product_attention(q, k, v, mask=dense, scale=80**-0.5, backend="xla")
  np.testing.assert_allclose(splash, xla, atol=2e-5)
  from_ids = attention.dot_product_attention(q, k, v, mask=None, scale=80**-0.5, backend="xla", segment_ids=(ids, ids))
  np.testing.assert_array_equal(from_ids, xla)  # xla builds the same dense mask from the ids.


def test_splash_and_cudnn_over_a_cache_use_xla(interpret):
  q, k, v = _qkv(2, 1, 4, 2, 32)
  cache_k, cache_v = jnp.tile(k.swapaxes(1, 2), (1, 1, 9, 1)), jnp.tile(v.swapaxes(1, 2), (1, 1, 9, 1))
  mask = jnp.arange(9)[None, None, None, :] < jnp.asarray([3, 9])[:, None, None, None]
  kw = dict(mask=mask, scale=0.2, kv_layout="bksd")
  np.testing.assert_array_equal(
    attention.dot_product_attention(q, cache_k, cache_v, backend="splash", **kw),
    attention.dot_product_attention(q, cache_k, cache_v, backend="xla", **kw),
  )
  q, cache_k, cache_v = (x.astype(jnp.bfloat16) for x in (q, cache_k, cache_v))
  np.testing.assert_array_equal(  # cuDNN too: bfloat16 over the cache stays on xla (no transpose).
    attention.dot_product_attention(q, cache_k, cache_v, backend="cudnn", **kw),
    attention.dot_product_attention(q, cache_k, cache_v, backend="xla", **kw),
  )


@pytest.mark.parametrize("name", ["qwen2_5_vl_tiny", "qwen3_vl_tiny"])
def test_the_tiny_model_with_splash_gives_the_xla_logits(interpret, name):
  cfg = presets.preset(name)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 380, size=(2, 96)).astype(np.int32)
  am = np.ones_like(ids)
  am[1, :20] = 0  # Left padding, as the sampler's prompts.
  logits = {}
  for backend in ("xla", "splash"):
    model = build_model(cfg, seed=0, attention_backend=backend)
    logits[backend] = np.asarray(model.forward(jnp.asarray(ids), attention_mask=jnp.asarray(am)))
  real = am.astype(bool)
  np.testing.assert_allclose(logits["splash"][real], logits["xla"][real], atol=1e-4)


def test_packed_rows_through_the_scanned_model_with_splash_give_the_xla_logits(interpret):
  cfg = presets.preset("qwen2_5_vl_tiny")
  ids = np.random.default_rng(1).integers(0, 380, size=(1, 128)).astype(np.int32)
  segments = np.asarray([[1] * 50 + [2] * 60 + [0] * 18], np.int32)  # Two packed, then padding.
  logits = {}
  for backend in ("xla", "splash"):
    model = build_model(cfg, seed=0, attention_backend=backend, scan_layers=True)
    logits[backend] = np.asarray(model.forward(jnp.asarray(ids), attention_mask=jnp.asarray(segments)))
  real = segments > 0
  np.testing.assert_allclose(logits["splash"][real], logits["xla"][real], atol=1e-4)
