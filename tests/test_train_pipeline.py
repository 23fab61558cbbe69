"""The SFT input pipeline: static shapes, the padding image, host offsets, determinism, and a
checkpointable Grain iterator."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codevision_jax.data import pipeline
from codevision_jax.models import build_model
from codevision_jax.processing import image as image_lib
from codevision_jax.train import step as step_lib
from tiny_data import short_synthetic

SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return short_synthetic(str(tmp_path_factory.mktemp("tok")), 12, 3, SETTINGS)


def spec(**kw):
  kw = {"buckets": (512, 768), "batch_size": 2, "patch_budget": 96, "max_images": 4, **kw}
  return pipeline.BatchSpec(**kw)


@pytest.mark.parametrize("sort_window", [0, 2])
def test_plan_is_deterministic_per_epoch_and_respects_budgets(setup, sort_window):
  _, _, _, sizes = setup
  s = spec(sort_window=sort_window)
  a = pipeline.BatchPlan(sizes, s, seed=0, num_epochs=2)
  b = pipeline.BatchPlan(sizes, s, seed=0, num_epochs=2)
  assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
  epoch0 = pipeline.plan_epoch(sizes, s, 0, 0)
  assert epoch0 != pipeline.plan_epoch(sizes, s, 0, 1)  # Reshuffled every epoch.
  seen = sorted(i for _, groups in epoch0 for g in groups for i in g)
  assert seen == sorted(np.flatnonzero(sizes[:, 1] <= 96).tolist())  # Each fitting record once.
  for bucket, groups in epoch0:
    assert bucket in (512, 768) and len(groups) == s.groups
    for g in groups:
      assert len(g) <= s.rows and sizes[g, 1].sum() <= 96 and sizes[g, 0].max(initial=0) <= bucket


def test_padded_batch_gives_the_models_logits(setup):
  tok, convs, mc, sizes = setup
  s = spec()
  builder = pipeline.BatchBuilder(convs, tok, SETTINGS, s, mc)
  rows = np.flatnonzero(sizes[:, 0] <= 512)[:2].tolist()
  batch = builder((512, [rows]))
  assert batch["input_ids"].shape == (1, 2, 512) and batch["vision"].pixel_values.shape == (1, 96, 1176)
  assert batch["position_ids"].shape == (1, 3, 2, 512)
  real = int(sizes[rows, 1].sum())
  assert real < 96  # So the padding image is there.
  # Fewer layers keep the eager forward quick; one windowed and one full-attention vision block.
  small = mc.replace(
    text=dataclasses.replace(mc.text, num_hidden_layers=1),
    vision=dataclasses.replace(mc.vision, depth=2, fullatt_block_indexes=(1,)),
  )
  model = build_model(small, seed=0)
  mb = jax.tree.map(lambda v: jnp.asarray(v[0]), {k: v for k, v in batch.items() if k != "image_grid_thw"})
  padded_logits = nnx.jit(lambda m, mb: m.logits(step_lib.forward_hidden(m, mb)))(model, mb)
  reference = nnx.jit(lambda m, ids, pv, meta, pos: m.forward(ids, pv, meta, None, pos))
  for row, index in enumerate(rows):  # Each example alone, unpadded, the model's own way.
    one = builder.group(512, [index])
    n = int(one["attention_mask"].sum())
    ids = one["input_ids"][:, :n]
    grids = one["image_grid_thw"][: int(sizes[index, 2])]
    pv = one["vision"].pixel_values[: int(sizes[index, 1])]
    pos, meta = model.prepare(ids, grids)
    ref = reference(model, jnp.asarray(ids), jnp.asarray(pv), meta.as_arrays(), jnp.asarray(pos))
    np.testing.assert_allclose(padded_logits[row, :n], ref[0], atol=2e-5, rtol=1e-4)


def test_second_host_offsets(setup):
  tok, convs, mc, _ = setup
  s = spec(batch_size=2, num_hosts=2)
  host1 = pipeline.BatchBuilder(convs, tok, SETTINGS, s, mc, host=1)
  g = host1.group(512, [0])
  index = g["image_index"][g["image_index"] >= 0]
  assert index.min() == 96 // 4  # Host 1's features follow host 0's 24 merged units.
  meta = g["vision"].meta
  assert meta.window_index.min() == 24 and sorted(meta.window_index) == list(range(24, 48))
  assert meta.full_segments.min() >= 96 and meta.window_segments.min() >= 96


def test_fixed_groups_give_one_host_the_batches_of_two(setup):
  """With data.groups fixed, one host builds exactly the concatenation of what two hosts build
  (rows, patches and every index into them), so the global batch does not depend on the
  number of processes."""
  tok, convs, mc, sizes = setup
  one = pipeline.BatchPlan(sizes, spec(batch_size=4, num_groups=2), seed=0)
  two = pipeline.BatchPlan(sizes, spec(batch_size=4, num_groups=2, num_hosts=2), seed=0)
  assert [one[i] for i in range(len(one))] == [two[i] for i in range(len(two))]
  whole = pipeline.BatchBuilder(convs, tok, SETTINGS, one.spec, mc)(one[0])
  parts = [pipeline.BatchBuilder(convs, tok, SETTINGS, two.spec, mc, host=h)(two[0]) for h in range(2)]
  assert whole["input_ids"].shape[1] == 2 * parts[0]["input_ids"].shape[1] == 4
  for key in ("input_ids", "image_index", "loss_mask", "attention_mask"):
    np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts], axis=1))
  np.testing.assert_array_equal(whole["position_ids"], np.concatenate([p["position_ids"] for p in parts], axis=2))
  vision = [jax.tree.leaves(p["vision"]) for p in parts]
  for a, *b in zip(jax.tree.leaves(whole["vision"]), *vision):
    np.testing.assert_array_equal(a, np.concatenate(b, axis=1))
  with pytest.raises(ValueError, match="data.groups 3 is not a multiple of the 2 processes"):
    spec(batch_size=6, num_groups=3, num_hosts=2)


def test_iterator_state_resumes_the_sequence(setup):
  tok, convs, mc, sizes = setup
  plan = pipeline.BatchPlan(sizes, spec(), seed=1, num_epochs=2)
  builder = pipeline.BatchBuilder(convs, tok, SETTINGS, plan.spec, mc)
  it = pipeline.make_iterator(plan, builder)
  next(it)
  state = it.get_state()
  expected = [next(it)["input_ids"] for _ in range(2)]
  again = pipeline.make_iterator(plan, builder, state=state)
  assert all(np.array_equal(e, next(again)["input_ids"]) for e in expected)
  workers = pipeline.make_iterator(plan, builder, workers=1)
  assert np.array_equal(
    next(workers)["vision"].pixel_values, next(pipeline.make_iterator(plan, builder))["vision"].pixel_values
  )
