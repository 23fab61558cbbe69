"""The vision tower attends per image and per window: `segment_attention` restricted to a band
of keys around each block of patches equals attention over all patches for segments up to the
span, the whole model still equals transformers when the band is in use, microbatches carry a
span fixed by the image settings, and no N x N score matrix is built."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_reference as H
from codevision_jax.data import pack
from codevision_jax.data.encode import Example
from codevision_jax.models import prepare
from codevision_jax.models.vision import Segments, band_geometry, segment_attention


def _qkv(rng, n, heads=2, dim=16):
  return [jnp.asarray(rng.normal(size=(n, heads, dim)), jnp.float32) for _ in range(3)]


def test_band_geometry():
  assert band_geometry(8192, 1024) == (128, 8)  # 2,176 keys per query instead of 8,192.
  assert band_geometry(8192, 64) == (64, 1)  # 64-patch windows: 192 keys.
  assert band_geometry(512, 256) is None  # The band would cover everything: dense.
  assert band_geometry(8192, 0) is None  # No bound known: dense.


@pytest.mark.parametrize("span", [64, 128, 256])
def test_banded_equals_dense_for_segments_up_to_the_span(span):
  rng = np.random.default_rng(span)
  lengths = rng.integers(1, span + 1, size=40)
  lengths[[3, 17]] = span  # Runs exactly as long as the bound, too.
  real = int(lengths.sum())
  ids = np.repeat(np.arange(len(lengths) + 1), list(lengths) + [5 * span])  # A long padding run.
  q, k, v = _qkv(rng, len(ids))
  assert band_geometry(len(ids), span) is not None
  band = Segments(jnp.asarray(ids), span)
  dense = Segments(jnp.asarray(ids), 0)

  def out(q, k, v, segments):
    return segment_attention(q, k, v, segments, scale=0.25)

  np.testing.assert_allclose(out(q, k, v, band)[:real], out(q, k, v, dense)[:real], atol=2e-6)

  def loss(segments):  # The real patches' outputs: their gradients w.r.t. everything.
    return lambda q, k, v: jnp.sum(jnp.sin(out(q, k, v, segments)[:real]))

  for got, want in zip(jax.grad(loss(band), (0, 1, 2))(q, k, v), jax.grad(loss(dense), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=5e-6)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_many_images_with_the_band_equal_transformers(model_type):
  """Twelve 8x8-patch images (and a larger one) in one batch: full attention runs banded (span
  64 < N), so do Qwen2.5-VL's windows, and the logits are transformers'."""
  kw = dict(window_size=56) if model_type == "qwen2_5_vl" else dict(deepstack=(1,))
  hf = H.random_hf_model(H.tiny_hf_config(model_type, **kw), seed=3)
  ours = H.flax_from_hf(hf)
  patch = hf.config.vision_config.patch_size
  rng = np.random.default_rng(1)
  rows = [[(1, 8, 8)] * 6, [(1, 8, 8)] * 6 + [(1, 4, 6)]]
  ids, mask, pv, grid = H.make_batch(rng, rows, 3 * 2 * patch * patch)
  meta = prepare.vision_metadata(ours.config, grid)
  assert meta.full_span == 64 and band_geometry(len(pv), meta.full_span) is not None
  expected = H.hf_logits(hf, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], expected[valid], atol=1e-4, rtol=0)


def _example(mc, grids):
  unit = mc.vision.spatial_merge_size**2
  patch_dim = 3 * 2 * mc.vision.patch_size**2
  ids = [1]
  for t, h, w in grids:  # Each image's tokens, then a text token.
    ids += [mc.image_token_id] * (t * h * w // unit) + [2]
  ids = np.array(ids, np.int32)
  return Example(
    input_ids=ids,
    loss_mask=np.ones_like(ids),
    pixel_values=np.zeros((sum(t * h * w for t, h, w in grids), patch_dim), np.float32),
    image_grid_thw=np.asarray(grids, np.int64).reshape(-1, 3),
    token_values={},
  )


def test_microbatches_carry_the_span_of_the_image_settings():
  from codevision_jax.models import presets

  mc = presets.preset("qwen2_5_vl_tiny")
  kw = dict(length=256, rows=2, patch_budget=512, max_images=4, model_config=mc, pad_id=0, max_image_patches=100)
  a = pack.pack([_example(mc, [(1, 8, 8)])], **kw)
  b = pack.pack([_example(mc, [(1, 4, 4), (1, 10, 10)])], **kw)
  # The same static span whatever the images: microbatches stack and share one compilation.
  assert a["vision"].meta.full_span == b["vision"].meta.full_span == 128
  assert jax.tree.structure(a) == jax.tree.structure(b)
  with pytest.raises(
    ValueError,
    match=r"grid \[1, 12, 10\] has 120 patches per frame, more "
    r"than the 100 that max_pixels allows",
  ):
    pack.pack([_example(mc, [(1, 12, 10)])], **kw)


def test_no_score_matrix_over_all_patches():
  """The vision tower of 8,192 patches (sixteen 32x16 images), lowered: no array has two
  8,192-long axes, where dense attention makes [1, heads, 8192, 8192] scores."""
  from codevision_jax.models import build_model, presets

  mc = presets.preset("qwen2_5_vl_tiny")
  model = build_model(mc, seed=0)
  grid = np.asarray([[1, 32, 16]] * 16, np.int64)
  meta = prepare.vision_metadata(mc, grid).as_arrays()
  pixels = jnp.zeros((8192, 3 * 2 * mc.vision.patch_size**2), jnp.float32)
  visual = model.model.visual
  text = jax.jit(lambda p, m: visual(p, m)[0]).lower(pixels, meta).as_text()
  assert "8192" in text
  assert not re.search(r"8192x8192", text)
  dense = jax.jit(lambda p, m: visual(p, m)[0]).lower(pixels, meta.replace(full_span=0, window_span=0)).as_text()
  assert re.search(r"8192x8192", dense)  # What the check would see without the band.
