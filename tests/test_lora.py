"""LoRA (models/lora.py): zero-initialised adapters leave the model's function unchanged exactly,
only the adapters train (gradients reach nothing else, the frozen base is bitwise unchanged), a
LoRA SFT run lowers the loss, and the config's errors name the key."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from codevision_jax import models
from codevision_jax.models import lora, presets
from codevision_jax.runtime import optimizer
from codevision_jax.train import loop
from configs import tiny_sft


def _inputs(mc, seed=0):
  """A row with one 4x4-patch image and a text-only row, transformers-style."""
  rng = np.random.default_rng(seed)
  v = mc.vision
  n = 16 // v.spatial_merge_size**2
  ids = np.array(
    [
      [5, 6, mc.vision_start_token_id] + [mc.image_token_id] * n + [mc.vision_end_token_id, 7, 8, 9],
      list(rng.integers(10, 300, 3 + n + 4)),
    ],
    np.int32,
  )
  patch = v.in_channels * v.temporal_patch_size * v.patch_size**2
  pixels = rng.standard_normal((16, patch)).astype(np.float32)
  return dict(input_ids=ids[:1], pixel_values=pixels, image_grid_thw=np.array([[1, 4, 4]])), ids[1:]


def _settings(**kw):
  return lora.LoraSettings(**{"rank": 4, "alpha": 8.0, "targets": lora.DEFAULT_TARGETS + ("merger", "tower"), **kw})


@pytest.mark.parametrize("preset,scan", [("qwen2_5_vl_tiny", False), ("qwen3_vl_tiny", True)])
def test_zero_initialised_adapters_give_exactly_the_base_logits(preset, scan):
  mc = presets.preset(preset)
  model = models.build_model(mc, seed=1, scan_layers=scan)
  image_row, text_row = _inputs(mc)
  base = (np.asarray(model(**image_row)), np.asarray(model(text_row)))
  lora.apply(model, _settings(), seed=7)
  adapters = nnx.state(model, lora.adapters_filter())
  paths = [p for p, _ in nnx.to_flat_state(adapters)]
  assert any("language_model" in p for p in paths) and any("merger" in p for p in paths)
  assert not any("patch_embed" in p or "lm_head" in p for p in paths)
  b = [v.get_value() for p, v in nnx.to_flat_state(adapters) if p[-1] == "lora_b"]
  a = [v.get_value() for p, v in nnx.to_flat_state(adapters) if p[-1] == "lora_a"]
  assert all(not np.any(x) for x in b) and all(np.std(x) > 0 for x in a)  # A random, B zero.
  np.testing.assert_array_equal(np.asarray(model(**image_row)), base[0])
  np.testing.assert_array_equal(np.asarray(model(text_row)), base[1])


def test_adapters_change_the_logits_by_scale_times_b_a():
  """A non-zero B changes the logits as a model whose kernels are W + scale * A @ B does."""
  mc = presets.preset("qwen2_5_vl_tiny")
  model = models.build_model(mc, seed=1)
  lora.apply(model, _settings(targets=("q", "down")), seed=7)
  rng = np.random.default_rng(0)
  state = nnx.state(model, lora.adapters_filter())
  nnx.update(model, jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.05, x.dtype), state))
  image_row, _ = _inputs(mc)
  out = np.asarray(model(**image_row))
  merged = models.build_model(mc, seed=1)
  for path, module in nnx.iter_modules(model):
    if getattr(module, "lora_a", None) is not None:
      target = merged
      for p in path:
        target = target[p] if isinstance(p, int) else getattr(target, p)
      target.kernel.set_value(
        jnp.asarray(
          lora.merged_kernel(module.kernel.get_value(), module.lora_a.get_value(), module.lora_b.get_value(), 2.0)
        )
      )
  ref = np.asarray(merged(**image_row))
  assert np.abs(out - ref).max() < 1e-4 < np.abs(out - np.asarray(models.build_model(mc, seed=1)(**image_row))).max()


def config(**lora_kw):
  c = tiny_sft.get_config()
  c.data.synthetic_size, c.data.buckets, c.data.drop_oversized = 48, (512,), True
  c.data.batch_size, c.data.patch_budget, c.data.max_pixels = 4, 64, 28 * 28 * 4
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 12, 1, 100
  c.mesh.num_devices, c.mesh.shape.fsdp = 2, 2
  c.optim.lr = 1e-2  # Adapters of a random model: a higher rate than full fine-tuning.
  c.model.lora = lora.config_section()
  c.model.lora.rank = 8
  c.model.lora.alpha = 16.0
  for k, v in lora_kw.items():
    c.model.lora[k] = v
  return c


def _flat(tree):
  return {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_lora_sft_trains_only_the_adapters_and_lowers_the_loss(tmp_path):
  c = config()
  run = loop.build(c, str(tmp_path / "build"))
  frozen_before = _flat(run.frozen)
  trainable = jax.tree_util.tree_flatten_with_path(run.state["params"])[0]
  assert trainable and all(str(p[-1].key) in lora.ADAPTER_NAMES for p, _ in trainable)
  # The base holds no float32 master copy: it is in the compute dtype (float32 here) and frozen.
  assert not any("lora" in jax.tree_util.keystr(p) for p in frozen_before)
  result = loop.train(c, str(tmp_path / "run"))
  losses = [h["loss"] for h in result.history]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses  # Step-to-step noise: ~0.05.
  after = _flat(result.frozen)
  assert after.keys() == frozen_before.keys()
  for k in after:
    np.testing.assert_array_equal(after[k], frozen_before[k])
  moved = [
    np.abs(v).max() for p, v in jax.tree_util.tree_flatten_with_path(result.state["params"])[0] if p[-1].key == "lora_b"
  ]
  assert min(moved) > 0  # Every B has left zero: gradients reach every adapter.


def test_gradients_reach_only_the_adapters():
  """The split of `optimizer.trainable_of` with LoRA on: the loss's gradient flows to A and B,
  and the rest is outside the differentiated tree."""
  c = config()
  mc = presets.preset("qwen2_5_vl_tiny")
  model = models.build_model(mc, seed=1)
  lora.apply(model, lora.settings(c), seed=0)
  graphdef, params, frozen, rest = nnx.split(model, optimizer.trainable_of(c), nnx.Param, ...)
  image_row, _ = _inputs(mc)

  def loss(p):
    m = nnx.merge(graphdef, p, frozen, rest)
    return jnp.mean(m(**image_row) ** 2)

  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.05, x.dtype), params)
  grads = jax.grad(loss)(params)
  flat = nnx.to_flat_state(grads)
  assert {p[-1] for p, _ in flat} == {"lora_a", "lora_b"}
  assert all(np.abs(v.get_value()).max() > 0 for _, v in flat)
  n_frozen = sum(x.size for x in jax.tree.leaves(frozen))
  n_trainable = sum(x.size for x in jax.tree.leaves(params))
  assert n_trainable < n_frozen / 10


def test_config_errors_name_the_key():
  c = ml_collections.ConfigDict({"model": {"lora": lora.config_section()}, "train": {"compute_dtype": "bfloat16"}})
  assert not lora.settings(c).enabled
  c.model.lora.rank = 8
  s = lora.settings(c)
  assert s.enabled and s.scale == 2.0 and s.base_dtype == "bfloat16"
  c.model.lora.targets = ("q", "qkv")
  with pytest.raises(ValueError, match=r"model\.lora.*'qkv'"):
    lora.settings(c)
  c.model.lora.targets = ("q",)
  c.model.lora.dropout = 0.1
  with pytest.raises(ValueError, match=r"model\.lora\.dropout"):
    lora.settings(c)
  c.model.lora.dropout = 0.0
  c.model.lora.base_dtype = "fp8"
  with pytest.raises(ValueError, match=r"model\.lora\.base_dtype"):
    lora.settings(c)


def test_an_int8_base_is_close_to_the_bfloat16_base_and_smaller():
  """QLoRA: the decoder's projections in int8 (per-column scales) move the logits at most ~2x what
  a bfloat16 base does, and the base takes fewer bytes."""
  mc = presets.preset("qwen2_5_vl_tiny")
  image_row, text_row = _inputs(mc)
  exact = models.build_model(mc, seed=1)
  want = np.asarray(exact(**image_row)), np.asarray(exact(text_row))
  errors, sizes = {}, {}
  for base in ("bfloat16", "int8"):
    model = models.build_model(mc, seed=1)
    lora.apply(model, lora.LoraSettings(rank=4, base_dtype=base, float_base="bfloat16"))
    got = np.asarray(model(**image_row), np.float32), np.asarray(model(text_row), np.float32)
    errors[base] = max(np.abs(g - w).max() for g, w in zip(got, want))
    sizes[base] = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Not(lora.adapters_filter()))))
    kernels = [
      v.get_value()
      for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
      if p[-1] == "kernel" and lora.is_quantized_layer(p[:-1])
    ]
    assert {k.dtype for k in kernels} == {np.dtype(np.int8 if base == "int8" else jnp.bfloat16)}
  assert 0 < errors["bfloat16"] <= errors["int8"] < 2.5 * errors["bfloat16"], errors
  assert errors["int8"] < 0.2 * np.std(want[0])  # Well under the logits' spread.
  projections = sum(
    x.size
    for p, x in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(nnx.state(models.build_model(mc, seed=1), nnx.Param))
    )[0]
    if p[-1].key == "kernel" and lora.is_quantized_layer(tuple(k.key for k in p[:-1]))
  )
  # A byte saved per projection weight, less the scales (one per output column and layer).
  assert 0.95 * projections <= sizes["bfloat16"] - sizes["int8"] < projections


def test_the_dry_run_counts_adapters_an_adapter_sized_reference_and_a_shared_base():
  """`--dry_run` with model.lora: the 7B RL recipe at rank 64 on one device holds adapters
  (rank x (in + out) per projection, float32) and their moments, a bfloat16 reference of the
  adapters' size, the base in bfloat16, and no sampler copy of the base."""
  from codevision_jax import parallel
  from codevision_jax.runtime import dry_run
  from configs import qwen2_5_vl_7b_rl

  c = qwen2_5_vl_7b_rl.get_config()
  c.model.preset, c.model.lora.rank = "qwen2_5_vl_7b", 64
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  plan = dry_run.plan(c, kind="rl", platform="gpu", device_memory=141e9, mesh=mesh)
  parts = {p.name: p.bytes for p in plan.phases["rollout"]}
  t = presets.preset("qwen2_5_vl_7b").text
  h, q, kv, m = (
    t.hidden_size,
    t.num_attention_heads * t.resolved_head_dim,
    t.num_key_value_heads * t.resolved_head_dim,
    t.intermediate_size,
  )
  adapter_values = 64 * t.num_hidden_layers * ((h + q) * 2 + (h + kv) * 2 + (h + m) * 3)
  assert parts["parameters"] == 4 * adapter_values
  assert parts["optimizer state"] >= 2 * 4 * adapter_values
  assert parts["reference"] == 2 * adapter_values  # algo.ref_dtype bfloat16, adapter-sized.
  assert parts["sampler frozen copy"] == 0 and parts["sampler weights"] == 2 * adapter_values
  assert 14e9 < parts["frozen parameters"] < 18e9  # ~8.3B parameters in bfloat16.
