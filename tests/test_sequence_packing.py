"""Sequence packing: several conversations per row, each its own attention segment. The plan
packs every fitting record once within the budgets, deterministically; each packed conversation
gets the logits it gets alone (its images, positions restarting at the segment, no attention
across segments); the packed step's summed loss and gradients equal the unpacked step's."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from codevision_jax.data import encode, pack, pipeline
from codevision_jax.models import build_model
from codevision_jax.processing import image as image_lib
from codevision_jax.train import step as step_lib
from tiny_data import short_synthetic

SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  jax.config.update("jax_default_matmul_precision", "highest")
  tok, convs, mc, sizes = short_synthetic(str(tmp_path_factory.mktemp("tok")), 16, 5, SETTINGS)
  model = build_model(mc, seed=0)
  examples = [encode.encode(c, tok, SETTINGS) for c in convs]
  return tok, convs, mc, sizes, model, examples


def spec(**kw):
  kw = {"buckets": (512, 1024), "batch_size": 2, "patch_budget": 256, "max_images": 8, **kw}
  return pipeline.BatchSpec(**kw)


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_plan_packs_every_record_once_within_the_budgets(setup, packing):
  _, _, _, sizes, _, _ = setup
  s = spec(packing=packing)
  epoch = pipeline.plan_epoch(sizes, s, 0, 0)
  assert epoch == pipeline.plan_epoch(sizes, s, 0, 0)  # Deterministic per seed...
  assert epoch != pipeline.plan_epoch(sizes, s, 0, 1)  # ...and reshuffled every epoch.
  seen = sorted(i for _, groups in epoch for g in groups for row in g for i in row)
  assert seen == sorted(np.flatnonzero(s.fits(sizes)).tolist())
  rows_used = 0
  for bucket, groups in epoch:
    assert len(groups) == s.groups
    for g in groups:
      assert len(g) <= s.rows
      members = [i for row in g for i in row]
      assert sizes[members, 1].sum() <= s.patch_budget and sizes[members, 2].sum() <= s.max_images
      for row in g:
        assert sizes[row, 0].sum() <= bucket <= s.buckets[-1]
      rows_used += len(g)
  assert rows_used < len(seen)  # Rows do hold several records.
  with pytest.raises(ValueError, match="data.packing 'tight' is not one of"):
    spec(packing="tight")


def _forward(model, mb):
  graphdef, state = nnx.split(model)

  @jax.jit
  def logits(state, mb):
    m = nnx.merge(graphdef, state)
    return m.logits(step_lib.forward_hidden(m, mb))

  return np.asarray(logits(state, mb))


def _pack(setup, examples, rows_of, rows, length=2048):
  _, _, mc, _, _, _ = setup
  return pack.pack(
    examples,
    length=length,
    rows=rows,
    patch_budget=512,
    max_images=24,
    model_config=mc,
    pad_id=0,
    max_image_patches=SETTINGS.max_frame_patches,
    rows_of=rows_of,
  )


def test_each_packed_conversation_gets_its_own_logits(setup):
  _, _, _, _, model, examples = setup
  chosen = [examples[i] for i in (0, 1, 2, 3)]
  packed = _pack(setup, chosen, [0, 0, 0, 1], rows=2)
  assert packed["attention_mask"][0].max() == 3 and packed["attention_mask"][1].max() == 1
  got = _forward(model, packed)
  start = 0
  for k, ex in enumerate(chosen[:3]):  # Row 0 holds three conversations.
    alone = _pack(setup, [ex], None, rows=1)
    want = _forward(model, alone)[0, : len(ex)]
    np.testing.assert_allclose(got[0, start : start + len(ex)], want, atol=2e-5, err_msg=str(k))
    # Positions restart with the segment; no loss target crosses into the next conversation.
    np.testing.assert_array_equal(
      packed["position_ids"][:, 0, start : start + len(ex)], alone["position_ids"][:, 0, : len(ex)]
    )
    assert packed["loss_mask"][0, start + len(ex) - 1] == 0
    start += len(ex)
  # Another conversation in the middle: the ones beside it do not see it, their logits stay.
  other = _pack(setup, [chosen[0], examples[5], chosen[2], chosen[3]], [0, 0, 0, 1], rows=2)
  moved = _forward(model, other)
  a, b = len(chosen[0]), len(chosen[0]) + len(examples[5])
  np.testing.assert_allclose(moved[0, :a], got[0, :a], atol=2e-5)
  np.testing.assert_allclose(
    moved[0, b : b + len(chosen[2])], got[0, a + len(chosen[1]) : a + len(chosen[1]) + len(chosen[2])], atol=2e-5
  )


def test_packed_step_sums_the_unpacked_losses_and_gradients(setup):
  _, _, _, _, model, examples = setup
  chosen = examples[:6]
  unpacked = _pack(setup, chosen, None, rows=6)
  packed = _pack(setup, chosen, [0, 0, 0, 1, 1, 1], rows=2)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  loss = jax.jit(
    jax.value_and_grad(
      functools.partial(
        step_lib.microbatch_loss, frozen={}, graphdef=graphdef, rest=rest, options=step_lib.StepOptions()
      ),
      has_aux=True,
    )
  )
  (l1, n1), g1 = loss(params, mb=unpacked)
  (l2, n2), g2 = loss(params, mb=packed)
  assert float(n1) == float(n2) > 0
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_pipeline_builds_packed_microbatches(setup):
  tok, convs, mc, sizes, _, _ = setup
  s = spec(packing="best_fit")
  plan = pipeline.BatchPlan(sizes, s, seed=0)
  builder = pipeline.BatchBuilder(convs, tok, SETTINGS, s, mc)
  bucket, groups = plan[0]
  batch = builder(plan[0])
  seg = batch["attention_mask"][0]  # [b, T] of the first microbatch
  assert [int(r.max()) for r in seg] == [len(row) for row in groups[0]] + [0] * (s.rows - len(groups[0]))
  assert batch["input_ids"].shape[-1] == bucket
  assert int((seg > 0).sum()) == int(sizes[[i for row in groups[0] for i in row], 0].sum())


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_a_packed_row_holds_no_more_segments_than_cudnn_attention_is_built_for(packing):
  from codevision_jax.data import geometry
  from codevision_jax.models import attention

  rng = np.random.default_rng(0)
  sizes = np.stack([rng.integers(20, 700, 500), np.zeros(500, int), np.zeros(500, int)], axis=1)
  g = geometry.Geometry(buckets=(1024, 8192), rows=4, patch_budget=512, max_images=8)
  groups = geometry.fill_groups(range(500), sizes, g, packing)
  rows = [row for group in groups for row in group]
  assert sorted(i for row in rows for i in row) == list(range(500))
  for row in rows:
    assert len(row) <= attention.segment_bound(geometry.row_length(sizes, row)), row
  # The bound binds: rows of short records stop at it, with room for more tokens left.
  full = [row for row in rows if len(row) == attention.segment_bound(geometry.row_length(sizes, row))]
  assert any(geometry.row_length(sizes, row) + 20 <= g.length for row in full)
