"""Helpers for parity tests: tiny random transformers models and copying their weights into ours.

torch and transformers are imported here only (the library never imports torch).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from flax import nnx

from codevision_jax.hf import keymap
from codevision_jax.models import VLConfig, build_model

QWEN_SPECIAL_IDS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)


def make_batch(rng, rows, patch_dim, pad_left=True, first_text_id=0, pad_id=0):
  """A batch as transformers' processor gives it. `rows`: per row, a list of image grids (t, h, w),
  each between random text; rows padded to one length (left by default) with `pad_id` and
  attention 0. Returns input_ids, attention_mask, pixel_values [patches, patch_dim], grid [n, 3]."""
  image, start, end = (QWEN_SPECIAL_IDS[k] for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id"))
  seqs, grids = [], []
  for row_grids in rows:
    seq = list(rng.integers(first_text_id, 240, rng.integers(2, 6)))
    for g in row_grids:
      seq += (
        [start] + [image] * (int(np.prod(g)) // 4) + [end] + list(rng.integers(first_text_id, 240, rng.integers(1, 5)))
      )
      grids.append(g)
    seqs.append(seq)
  length = max(map(len, seqs))
  ids = np.full((len(seqs), length), pad_id, np.int64)
  mask = np.zeros((len(seqs), length), np.int64)
  for i, seq in enumerate(seqs):
    sl = slice(length - len(seq), length) if pad_left else slice(0, len(seq))
    ids[i, sl] = seq
    mask[i, sl] = 1
  grid = np.asarray(grids, np.int64).reshape(-1, 3)
  pv = rng.standard_normal((int(grid.prod(-1).sum()), patch_dim)).astype(np.float32)
  return ids, mask, pv, grid


def tiny_hf_config(
  model_type="qwen2_5_vl",
  *,
  tie=False,
  kv_heads=2,
  vision_depth=4,
  fullatt=(1, 3),
  window_size=56,
  text_layers=2,
  vocab=256,
  hidden=64,
  heads=4,
  vision_hidden=32,
  vision_heads=2,
  deepstack=(1,),
  **over,
):
  """A small random config of the real architecture, as transformers' config object."""
  if model_type == "qwen2_5_vl":
    text = dict(
      vocab_size=vocab,
      hidden_size=hidden,
      intermediate_size=2 * hidden,
      num_hidden_layers=text_layers,
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      rms_norm_eps=1e-6,
      max_position_embeddings=4096,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(hidden // heads)},
    )
    vision = dict(
      depth=vision_depth,
      hidden_size=vision_hidden,
      intermediate_size=2 * vision_hidden,
      num_heads=vision_heads,
      patch_size=14,
      spatial_merge_size=2,
      temporal_patch_size=2,
      window_size=window_size,
      fullatt_block_indexes=list(fullatt),
      out_hidden_size=hidden,
    )
    cfg = transformers.Qwen2_5_VLConfig(
      text_config=text, vision_config=vision, tie_word_embeddings=tie, **QWEN_SPECIAL_IDS, **over
    )
  elif model_type == "qwen3_vl":
    head_dim = over.pop("head_dim", 2 * hidden // heads)  # explicit, unlike hidden // heads
    text = dict(
      vocab_size=vocab,
      hidden_size=hidden,
      intermediate_size=2 * hidden,
      num_hidden_layers=text_layers,
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      head_dim=head_dim,
      rms_norm_eps=1e-6,
      max_position_embeddings=4096,
      attention_bias=over.pop("attention_bias", False),
      rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _interleaved_mrope_section(head_dim),
        "mrope_interleaved": True,
      },
    )
    vision = dict(
      depth=vision_depth,
      hidden_size=vision_hidden,
      intermediate_size=2 * vision_hidden,
      num_heads=vision_heads,
      patch_size=16,
      spatial_merge_size=2,
      temporal_patch_size=2,
      out_hidden_size=hidden,
      num_position_embeddings=over.pop("num_position_embeddings", 64),
      deepstack_visual_indexes=list(deepstack),
    )
    cfg = transformers.Qwen3VLConfig(
      text_config=text, vision_config=vision, tie_word_embeddings=tie, **QWEN_SPECIAL_IDS, **over
    )
  else:
    raise ValueError(model_type)
  cfg._attn_implementation = "eager"
  cfg.text_config._attn_implementation = "eager"
  cfg.vision_config._attn_implementation = "eager"
  return cfg


def _mrope_section(head_dim):
  half = head_dim // 2
  t = half // 4
  h = (half - t) // 2
  return [t, h, half - t - h]


def _interleaved_mrope_section(head_dim):
  """[t, h, w] with 3 * max(h, w) <= head_dim / 2, as the released [24, 20, 20] for 128."""
  half = head_dim // 2
  hw = half * 5 // 16
  return [half - 2 * hw, hw, hw]


def random_hf_model(hf_config, seed=0, dtype=torch.float32):
  """A transformers model with every weight random, norms included (so a missing one shows)."""
  torch.manual_seed(seed)
  cls = {"qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}.get(hf_config.model_type)
  if cls is None:
    cls = transformers.Qwen3VLForConditionalGeneration
  model = cls(hf_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn_like(p))
      elif name.endswith("pos_embed.weight"):  # Qwen3-VL: large enough that resampling shows
        p.copy_(0.5 * torch.randn_like(p))
  return model.to(dtype)


def flax_from_hf(hf_model, param_dtype=np.float32):
  """Our model with the transformers model's weights (via the checkpoint key map)."""
  config = VLConfig.from_hf_dict(hf_model.config.to_dict())
  model = build_model(config, param_dtype=param_dtype)
  hf_state = {keymap.to_transformers_layout(k): v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  for m in keymap.param_mappings(nnx.state(model, nnx.Param), config):
    flat[m.path].set_value(np.asarray(m.from_hf(hf_state[m.hf_key])).astype(param_dtype))
  return model


def hf_logits(hf_model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
  ids = torch.as_tensor(np.asarray(input_ids))
  kwargs = {}
  if pixel_values is not None:
    kwargs.update(
      pixel_values=torch.as_tensor(np.asarray(pixel_values)), image_grid_thw=torch.as_tensor(np.asarray(image_grid_thw))
    )
  mm = (ids == hf_model.config.image_token_id).int()
  with torch.no_grad():
    out = hf_model(
      input_ids=ids,
      attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)),
      mm_token_type_ids=mm,
      **kwargs,
    )
  return out.logits.float().numpy()


def check_sharded_forward(model, ids, mask, pv, grid):
  """The jitted forward on a (data 2, fsdp 2, tensor 2) mesh of 8 CPU devices equals the
  unsharded one (valid positions, float32 tolerance). Shards `model` in place."""
  import jax
  from codevision_jax import parallel

  expected = np.asarray(model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  position_ids, meta = model.prepare(ids, grid, mask)
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  parallel.shard_model(model, mesh)
  q = model.model.language_model.layers[0].self_attn.q_proj.kernel[...]
  assert len(q.sharding.device_set) == 8
  assert q.addressable_shards[0].data.shape == (q.shape[0] // 2, q.shape[1] // 2)  # fsdp x tensor

  @nnx.jit
  def forward(m, ids, pv, meta, mask, pos):
    return m.forward(ids, pv, meta, mask, pos)

  batch = parallel.batch_sharding(mesh, 2)
  got = forward(model, jax.device_put(ids, batch), pv, meta.as_arrays(), jax.device_put(mask, batch), position_ids)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], expected[valid], atol=1e-5, rtol=0)


def check_rope_index(hf_model, ids, mask, grid):
  """Our host-side `get_rope_index` equals transformers' (positions and rope deltas)."""
  from codevision_jax.models import prepare

  image = hf_model.config.image_token_id
  t_ids = torch.as_tensor(ids)
  expected, expected_delta = hf_model.model.get_rope_index(
    t_ids,
    mm_token_type_ids=(t_ids == image).int(),
    image_grid_thw=torch.as_tensor(grid),
    attention_mask=torch.as_tensor(mask),
  )
  got, delta = prepare.get_rope_index(
    ids, grid, mask, image_token_id=image, spatial_merge_size=hf_model.config.vision_config.spatial_merge_size
  )
  np.testing.assert_array_equal(got, expected.numpy())
  np.testing.assert_array_equal(delta, expected_delta.numpy().reshape(-1))
