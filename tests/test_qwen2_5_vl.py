"""Qwen2.5-VL: logits equal to transformers, sharded forward, and the M-RoPE position ids."""

import numpy as np
import pytest
import torch

import hf_reference as H
from codevision_jax.models import prepare

IMG, VS, VE = (
  H.QWEN_SPECIAL_IDS["image_token_id"],
  H.QWEN_SPECIAL_IDS["vision_start_token_id"],
  H.QWEN_SPECIAL_IDS["vision_end_token_id"],
)


def make_batch(rng, rows, pad_left=True):
  return H.make_batch(rng, rows, 3 * 2 * 14 * 14, pad_left)


CONFIGS = {
  "untied_gqa": dict(tie=False, kv_heads=2, fullatt=(1, 3), window_size=56),
  "tied_one_kv_head": dict(tie=True, kv_heads=1, fullatt=(0,), window_size=56),
  "many_full_blocks_big_window": dict(tie=False, kv_heads=4, fullatt=(0, 2, 3), window_size=84),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_equal_transformers_float32(name):
  hf = H.random_hf_model(H.tiny_hf_config(**CONFIGS[name]), seed=1)
  ours = H.flax_from_hf(hf)
  rng = np.random.default_rng(0)
  # Windows of 56 px are 2x2 merged units; grids 10x14 and 6x18 do not divide into them.
  ids, mask, pv, grid = make_batch(rng, [[(1, 10, 14), (1, 4, 4)], [(1, 6, 18)]])
  expected = H.hf_logits(hf, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  valid = mask.astype(bool)
  assert got.shape == expected.shape
  assert np.abs(expected[valid]).max() > 0.1  # logits of order 1, not vanishing
  np.testing.assert_allclose(got[valid], expected[valid], atol=1e-4, rtol=0)


def test_right_padding_and_text_only_rows():
  hf = H.random_hf_model(H.tiny_hf_config(), seed=2)
  ours = H.flax_from_hf(hf)
  rng = np.random.default_rng(1)
  ids, mask, pv, grid = make_batch(rng, [[(1, 4, 6)], [], [(1, 8, 8), (1, 6, 4)]], pad_left=False)
  expected = H.hf_logits(hf, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], expected[valid], atol=1e-4, rtol=0)


def test_bfloat16_close_to_transformers():
  hf32 = H.random_hf_model(H.tiny_hf_config(), seed=3)
  rng = np.random.default_rng(2)
  ids, mask, pv, grid = make_batch(rng, [[(1, 8, 8)], [(1, 4, 6)]])
  expected32 = H.hf_logits(hf32, ids, mask, pv, grid)
  ours = H.flax_from_hf(hf32, param_dtype=np.dtype("bfloat16"))
  hf16 = hf32.to(torch.bfloat16)
  expected16 = H.hf_logits(hf16, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)).astype(np.float32)
  valid = mask.astype(bool)
  # Both bfloat16 runs stay near the float32 reference, and near each other.
  scale = np.abs(expected32[valid]).max()
  assert np.abs(got[valid] - expected32[valid]).max() < 0.05 * scale
  assert np.abs(got[valid] - expected16[valid]).max() < 0.05 * scale


def test_missing_image_features_is_an_error():
  hf = H.random_hf_model(H.tiny_hf_config(), seed=4)
  ours = H.flax_from_hf(hf)
  rng = np.random.default_rng(3)
  ids, mask, pv, grid = make_batch(rng, [[(1, 4, 4)]])
  with pytest.raises(ValueError, match="image tokens and image features do not match"):
    ours(ids, pixel_values=pv, image_grid_thw=np.array([[1, 8, 8]]), attention_mask=mask)
  with pytest.raises(ValueError, match="no pixel_values"):
    ours(ids, attention_mask=mask)


def test_rope_index_equals_transformers_with_left_padding():
  hf = H.random_hf_model(H.tiny_hf_config(), seed=5)
  rng = np.random.default_rng(4)
  ids, mask, _, grid = make_batch(rng, [[(1, 4, 6), (1, 8, 2)], [(1, 10, 4)], []])
  H.check_rope_index(hf, ids, mask, grid)


def test_vision_window_metadata_equals_transformers():
  from transformers import vision_utils

  grid = np.array([[1, 10, 14], [1, 4, 4], [2, 6, 18]])
  index, cu = vision_utils.get_vision_window_index(
    torch.as_tensor(grid), spatial_merge_size=2, window_size=56, patch_size=14
  )
  meta = prepare.window_metadata(grid, spatial_merge_size=2, patch_size=14, window_size=56)
  np.testing.assert_array_equal(meta.window_index, index.numpy())
  lengths = np.diff(cu.numpy())
  np.testing.assert_array_equal(np.bincount(meta.window_segments), lengths[lengths > 0])
  positions = vision_utils.get_vision_position_ids(torch.as_tensor(grid), 2)
  np.testing.assert_array_equal(meta.position_ids, positions.numpy())


def test_sharded_forward_equals_unsharded():
  hf = H.random_hf_model(H.tiny_hf_config(kv_heads=2), seed=6)
  model = H.flax_from_hf(hf)
  rng = np.random.default_rng(5)
  ids, mask, pv, grid = make_batch(rng, [[(1, 4, 6)], [(1, 8, 8)], [], [(1, 6, 6), (1, 4, 4)]])
  H.check_sharded_forward(model, ids, mask, pv, grid)
