"""Qwen3-VL: logits equal to transformers, DeepStack, resampled position embeddings, M-RoPE
position ids, sharded forward, and HF import/export through `cvj.load_hf` / `cvj.save_hf`."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

import codevision_jax as cvj
import hf_reference as H
from codevision_jax.models import VLConfig, prepare
from codevision_jax.models.presets import preset

IMG, VS, VE = (H.QWEN_SPECIAL_IDS[k] for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id"))
PATCH_DIM = 3 * 2 * 16 * 16


def make_batch(rng, rows, pad_left=True):
  return H.make_batch(rng, rows, PATCH_DIM, pad_left)


# Position tables of 8x8 (64) or 6x6 (36); the grids below are smaller and larger than both.
CONFIGS = {
  "deepstack_one_untied_gqa": dict(tie=False, kv_heads=2, vision_depth=3, deepstack=(1,)),
  "deepstack_three_tied_one_kv_head": dict(tie=True, kv_heads=1, vision_depth=4, deepstack=(0, 1, 3), text_layers=3),
  "mha_qkv_bias_small_table": dict(
    tie=False, kv_heads=4, vision_depth=3, deepstack=(2,), attention_bias=True, num_position_embeddings=36
  ),
}
# Row 0: two images of different sizes; row 1: one image, shorter, so it is left-padded.
ROWS = [[(1, 12, 10), (1, 4, 6)], [(1, 6, 8)]]


def _assert_logits_close(got, expected, mask, atol):
  valid = mask.astype(bool)
  assert got.shape == expected.shape
  assert np.abs(expected[valid]).max() > 0.1  # logits of order 1, not vanishing
  np.testing.assert_allclose(got[valid], expected[valid], atol=atol, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_equal_transformers_float32(name):
  hf = H.random_hf_model(H.tiny_hf_config("qwen3_vl", **CONFIGS[name]), seed=1)
  ours = H.flax_from_hf(hf)
  ids, mask, pv, grid = make_batch(np.random.default_rng(0), ROWS)
  expected = H.hf_logits(hf, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  _assert_logits_close(got, expected, mask, atol=1e-4)


def test_deepstack_and_position_embeddings_matter():
  """Guards the parity tests against vacuity: each Qwen3-only input changes the logits."""
  hf = H.random_hf_model(H.tiny_hf_config("qwen3_vl", deepstack=(1,)), seed=2)
  ours = H.flax_from_hf(hf)
  ids, mask, pv, grid = make_batch(np.random.default_rng(1), [[(1, 8, 8)]])
  run = lambda: np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  base = run()
  fc2 = ours.model.visual.deepstack_merger_list[0].linear_fc2
  for var in (fc2.kernel, fc2.bias, ours.model.visual.pos_embed.weight):
    var.set_value(var[...] * 0)
    if var is fc2.kernel:
      continue  # the DeepStack features are zero only once the bias is too
    changed = run()
    assert np.abs(changed - base).max() > 1e-3
    base = changed


def test_right_padding_and_text_only_rows():
  hf = H.random_hf_model(H.tiny_hf_config("qwen3_vl"), seed=3)
  ours = H.flax_from_hf(hf)
  ids, mask, pv, grid = make_batch(np.random.default_rng(2), [[(1, 4, 6)], [], [(1, 8, 8), (1, 6, 4)]], pad_left=False)
  expected = H.hf_logits(hf, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  _assert_logits_close(got, expected, mask, atol=1e-4)


def test_bfloat16_close_to_transformers():
  hf32 = H.random_hf_model(H.tiny_hf_config("qwen3_vl", deepstack=(0, 2), vision_depth=3), seed=4)
  ids, mask, pv, grid = make_batch(np.random.default_rng(3), ROWS)
  expected32 = H.hf_logits(hf32, ids, mask, pv, grid)
  ours = H.flax_from_hf(hf32, param_dtype=np.dtype("bfloat16"))
  expected16 = H.hf_logits(hf32.to(torch.bfloat16), ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)).astype(np.float32)
  valid = mask.astype(bool)
  # Both bfloat16 runs stay near the float32 reference, and near each other.
  scale = np.abs(expected32[valid]).max()
  assert np.abs(got[valid] - expected32[valid]).max() < 0.05 * scale
  assert np.abs(got[valid] - expected16[valid]).max() < 0.05 * scale


def test_rope_index_equals_transformers_with_left_padding():
  hf = H.random_hf_model(H.tiny_hf_config("qwen3_vl"), seed=5)
  ids, mask, _, grid = make_batch(np.random.default_rng(4), [[(1, 4, 6), (1, 8, 2)], [(1, 10, 4)], []])
  H.check_rope_index(hf, ids, mask, grid)


def test_vision_metadata_equals_transformers():
  from transformers import vision_utils

  grid = np.array([[1, 12, 10], [2, 4, 6], [1, 2, 2], [1, 48, 64]])
  indices, weights = vision_utils.get_vision_interpolation_indices_and_weights(
    torch.as_tensor(grid), num_grid_per_side=48, mode="bilinear", align_corners=True, spatial_merge_size=2
  )
  meta = prepare.vision_metadata(preset("qwen3_vl_8b"), grid)  # 48x48 table
  np.testing.assert_array_equal(meta.interp_indices, indices.numpy())
  np.testing.assert_array_equal(meta.interp_weights, weights.numpy())  # bit-identical float32
  np.testing.assert_array_equal(
    meta.position_ids, vision_utils.get_vision_position_ids(torch.as_tensor(grid), 2).numpy()
  )
  cu = vision_utils.get_vision_cu_seqlens(torch.as_tensor(grid)).numpy()
  np.testing.assert_array_equal(np.bincount(meta.full_segments), np.diff(cu))


def test_sharded_forward_equals_unsharded():
  hf = H.random_hf_model(H.tiny_hf_config("qwen3_vl", kv_heads=2, deepstack=(0, 2), vision_depth=3), seed=6)
  model = H.flax_from_hf(hf)
  ids, mask, pv, grid = make_batch(np.random.default_rng(5), [[(1, 4, 6)], [(1, 8, 8)], [], [(1, 6, 6), (1, 4, 4)]])
  H.check_sharded_forward(model, ids, mask, pv, grid)


# ---- config.json and checkpoints --------------------------------------------------------------

# The shape of the released Qwen3-VL-8B-Instruct config.json (older key names included).
RELEASED_8B = {
  "architectures": ["Qwen3VLForConditionalGeneration"],
  "image_token_id": 151655,
  "model_type": "qwen3_vl",
  "text_config": {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "dtype": "bfloat16",
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 262144,
    "model_type": "qwen3_vl_text",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
    "rope_theta": 5000000,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": 151936,
  },
  "tie_word_embeddings": False,
  "transformers_version": "4.57.0.dev0",
  "video_token_id": 151656,
  "vision_config": {
    "deepstack_visual_indexes": [8, 16, 24],
    "depth": 27,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "in_channels": 3,
    "initializer_range": 0.02,
    "intermediate_size": 4304,
    "model_type": "qwen3_vl",
    "num_heads": 16,
    "num_position_embeddings": 2304,
    "out_hidden_size": 4096,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
  },
  "vision_end_token_id": 151653,
  "vision_start_token_id": 151652,
}


def test_released_config_parses_to_the_preset_and_round_trips():
  cfg = VLConfig.from_hf_dict(RELEASED_8B)
  assert cfg == preset("qwen3_vl_8b")
  assert cfg.text.qk_norm and cfg.text.mrope_interleaved and not cfg.text.attention_bias
  again = VLConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict())))
  assert again == cfg
  hf_cfg = transformers.Qwen3VLConfig(**cfg.to_hf_dict())
  assert hf_cfg.text_config.rope_parameters["rope_theta"] == 5000000
  assert hf_cfg.text_config.rope_parameters["mrope_section"] == [24, 20, 20]
  assert hf_cfg.vision_config.model_type == "qwen3_vl_vision"
  assert list(hf_cfg.vision_config.deepstack_visual_indexes) == [8, 16, 24]
  assert VLConfig.from_hf_dict(hf_cfg.to_dict()) == cfg


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_load_hf_then_save_hf_round_trips_through_transformers(tmp_path, tie):
  hf = H.random_hf_model(H.tiny_hf_config("qwen3_vl", tie=tie, deepstack=(0, 1), vision_depth=3), seed=7)
  hf.save_pretrained(tmp_path / "hf")
  ours = cvj.load_hf(str(tmp_path / "hf"), dtype="float32")
  assert ours.config.model_type == "qwen3_vl" and (ours.lm_head is None) == tie
  ids, mask, pv, grid = make_batch(np.random.default_rng(8), ROWS)
  expected = H.hf_logits(hf, ids, mask, pv, grid)
  got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  _assert_logits_close(got, expected, mask, atol=1e-4)

  out = cvj.save_hf(ours, str(tmp_path / "export"))
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["model_type"] == "qwen3_vl"
  from safetensors import safe_open

  with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
    keys = set(f.keys())
  # Qwen3-VL's release layout is transformers' own.
  assert {"model.visual.pos_embed.weight", "model.visual.deepstack_merger_list.1.norm.weight"} <= keys
  assert "model.language_model.layers.0.self_attn.q_norm.weight" in keys
  assert ("lm_head.weight" in keys) == (not tie)
  reloaded = transformers.Qwen3VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
  reloaded.config._attn_implementation = "eager"
  reloaded.config.text_config._attn_implementation = "eager"
  reloaded.config.vision_config._attn_implementation = "eager"
  want, have = hf.state_dict(), reloaded.state_dict()
  assert set(want) == set(have)
  for k in want:
    assert torch.equal(want[k], have[k]), k  # bit-identical weights
  np.testing.assert_array_equal(H.hf_logits(reloaded, ids, mask, pv, grid), expected)
