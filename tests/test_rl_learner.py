"""The RL learner (rl/learner.py): trajectories packed several to a row train exactly as one per
row; the fused learner (one old + reference pass, the first mini-batch's old policy taken from its
own step, donated accumulation) equals the plain one (benchmarks/plain_learner.py: a pass per
policy, gradients summed outside jit); the budgets hold every trajectory the rollout limits allow."""

import jax
import numpy as np
import pytest

from benchmarks import plain_learner
from codevision_jax.data import geometry as geometry_lib, synthetic
from codevision_jax.models import presets
from codevision_jax.processing import image as image_lib
from codevision_jax.rl import rollouts
from codevision_jax.rl import batch as batch_lib
from codevision_jax.rl import learner, loop
from configs import tiny_rl


def config(ppo_epochs=1):
  c = tiny_rl.get_config()
  c.data.synthetic_size = 8
  c.rollout.prompts, c.rollout.group_size, c.rollout.slots = 4, 2, 2
  c.algo.mini_batch_prompts, c.algo.ppo_epochs = 2, ppo_epochs
  c.train.rows = 2  # Two rows of 768 tokens hold the four trajectories of a mini-batch packed.
  c.train.patch_budget = 256  # The images of two trajectories; four take a larger patch budget.
  c.optim.eps = 1e-6
  c.eval.every = 0
  c.mesh.num_devices = 1
  return c


def rollout(run) -> loop.ScoredRollouts:
  """Expert trajectories of synthetic tasks with made-up sampler log-probs and scores (two
  different ones in each of 4 groups)."""
  convs = synthetic.generate(8, seed=5, kinds=("arrow",), transforms=("none", "rotate_180"), p_small=0.0)
  return rollouts.expert_rollouts(convs, run.tokenizer, run.settings, np.repeat(np.arange(4), 2))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A tiny run, its rollouts and its initial state on the host (each test restores it)."""
  run = loop.build(config(), str(tmp_path_factory.mktemp("rl")))
  return run, rollout(run), jax.device_get(run.state)


def _learn(run, initial, ro, **train):
  run.state = jax.device_put(initial, run.state_sh)
  with run.cfg.unlocked():
    run.cfg.train.update(train)
  return learner.learn(run, ro)


def _assert_params_equal(a, b, atol=1e-6):  # Float32 reordering: measured 3e-7; updates move 4e-4.
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol), jax.device_get(a), jax.device_get(b)
  )


def test_packed_rows_train_as_one_trajectory_per_row(built):
  run, ro, initial = built
  one, m1 = _learn(run, initial, ro, packing="none")
  one = jax.device_get(one["params"])
  packed, m2 = _learn(run, initial, ro, packing="best_fit")
  assert m1["actor/updates"] == m2["actor/updates"] == 2
  assert m2["learn/microbatches"] < m1["learn/microbatches"]
  sizes = batch_lib.trajectory_sizes(ro.trajectories)
  real = sizes[:, 0].sum()
  assert m1["learn/real_token_share"] == real / (
    2
    * sum(  # 2 rows of each trajectory's bucket
      run.geometry.bucket(max(sizes[[i, i + 1], 0])) for i in range(0, 8, 2)
    )
  )
  packed_plans = [
    batch_lib.plan_microbatches(
      range(k, k + 4), sizes, run.geometry, "best_fit", learner.patch_budgets(run.cfg, run.model_config, run.settings)
    )
    for k in (0, 4)
  ]
  one_plans = [
    batch_lib.plan_microbatches(
      range(k, k + 4), sizes, run.geometry, "none", learner.patch_budgets(run.cfg, run.model_config, run.settings)
    )
    for k in (0, 4)
  ]
  # Some packed microbatch pads its images to a larger budget than any one-a-row microbatch.
  assert max(p.patch_budget for plans in packed_plans for p in plans) > max(
    p.patch_budget for plans in one_plans for p in plans
  )
  assert max(len(row) for plans in packed_plans for p in plans for row in p.rows) >= 2
  assert (
    m2["learn/real_token_share"]
    == real / batch_lib.token_slots([p for plans in packed_plans for p in plans], sizes, 2)[1]
  )
  for k in (
    "actor/pg_loss",
    "actor/kl",
    "actor/entropy",
    "actor/clipfrac",
    "actor/grad_norm",
    "actor/logprob_mismatch",
    "actor/policy_tokens",
  ):
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-7, err_msg=k)
  _assert_params_equal(one, packed["params"])
  moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), one, initial["params"])))
  assert moved > 1e-4  # The updates did something.


@pytest.mark.parametrize("ppo_epochs", [1, 2])
def test_fused_learner_equals_the_plain_one(built, ppo_epochs):
  run, ro, initial = built
  with run.cfg.unlocked():
    run.cfg.algo.ppo_epochs = ppo_epochs
  try:
    fused, m = _learn(run, initial, ro, packing="best_fit")
    fused = jax.device_get(fused["params"])
    run.state = jax.device_put(initial, run.state_sh)
    plain, _ = plain_learner.learn_plain(run, ro)
  finally:
    with run.cfg.unlocked():
      run.cfg.algo.ppo_epochs = 1
  assert m["actor/updates"] == 2 * ppo_epochs
  _assert_params_equal(fused, plain["params"])


def test_budgets_hold_every_trajectory_the_rollout_allows():
  cfg = tiny_rl.get_config()  # 4 rows of up to 768 tokens: 4 * 4 * 768 = 12288 patches at most.
  mc = presets.preset(cfg.model.preset)
  settings = image_lib.ImageSettings(min_pixels=56 * 56, max_pixels=28 * 28 * 256)  # 1024 patches an image
  cfg.agent.max_total_tokens, cfg.agent.max_images = 768, 4
  cfg.train.patch_budget, cfg.train.max_images = 512, 2
  # 768 tokens hold 768 * 4 patches at most, less than 4 images of 1024.
  assert learner.patch_budgets(cfg, mc, settings, shards=8) == (3072, 6144, 12288)
  g = learner.learner_geometry(cfg, mc, settings, shards=8)
  assert g.patch_budget == 12288 and g.max_images == 4
  cfg.agent.max_total_tokens = 100_000  # Now 4 images of 1024 patches are the bound.
  assert learner.patch_budgets(cfg, mc, settings, shards=3) == (4104, 8208, 12288)  # 4096 up to 12
  cfg.train.patch_budget = 20000  # Never lowered.
  assert learner.patch_budgets(cfg, mc, settings) == (20000,)


def test_config_the_learner_cannot_hold_is_refused_naming_keys():
  cfg = tiny_rl.get_config()
  cfg.train.rows = 3
  with pytest.raises(
    ValueError,
    match=r"train\.rows 3 and train\.patch_budget 512 must be multiples "
    r"of data x fsdp = 2",
  ):
    learner.check_fits(cfg, 2)
  cfg.train.rows, cfg.train.buckets = 4, (256, 512)
  with pytest.raises(
    ValueError,
    match=r"train\.buckets \(256, 512\) cannot hold a whole trajectory of "
    r"agent\.max_total_tokens 768",
  ):
    learner.check_fits(cfg, 2)


def test_plans_pack_rows_within_the_budgets():
  g = geometry_lib.Geometry(buckets=(256, 512), rows=2, patch_budget=64, max_images=3)
  sizes = np.array([[100, 16, 1], [300, 16, 1], [150, 16, 1], [200, 32, 1], [50, 0, 0], [500, 0, 0]])
  plans = batch_lib.plan_microbatches(range(6), sizes, g)
  assert [p.rows for p in plans] == [((0, 1), (2,)), ((3, 4), (5,))]
  assert [p.bucket for p in plans] == [512, 512]
  for p in plans:
    assert sizes[p.members, 1].sum() <= 64 and sizes[p.members, 2].sum() <= 3
    assert all(sizes[list(r), 0].sum() <= 512 for r in p.rows)
  one = batch_lib.plan_microbatches(range(6), sizes, g, packing="none")
  assert [p.rows for p in one] == [((0,), (1,)), ((2,), (3,)), ((4,), (5,))]
  real, slots = batch_lib.token_slots(plans, sizes, g.rows)
  assert real == 1300 and slots == 2 * 2 * 512
  auto = batch_lib.plan_microbatches(range(6), sizes, g, packing="auto")
  assert batch_lib.token_slots(auto, sizes, g.rows)[1] == min(
    batch_lib.token_slots(p, sizes, g.rows)[1] for p in (plans, one)
  )
  short = np.array([[120, 0, 0]] * 8)  # One microbatch of 2 rows x 512 (not 4 of 2 x 256).
  auto = batch_lib.plan_microbatches(range(8), short, g, packing="auto")
  assert len(auto) == 1 and batch_lib.token_slots(auto, short, g.rows)[1] == 1024
  with pytest.raises(ValueError, match="does not fit the microbatch geometry"):
    batch_lib.plan_microbatches([0], np.array([[600, 0, 0]]), g)


def test_uint8_pixels_become_on_device_what_the_host_preprocessing_gives(built):
  run, ro, _ = built
  sizes = batch_lib.trajectory_sizes(ro.trajectories)
  plan = batch_lib.plan_microbatches(range(4), sizes, run.geometry, "best_fit")[0]
  mb = batch_lib.build(plan, ro.trajectories, np.zeros(8), run.settings, run.geometry, run.model_config, run.pad_id)
  assert mb["vision"].pixel_values.dtype == np.uint8
  want = np.concatenate(
    [batch_lib.trajectory_example(ro.trajectories[i], run.settings, 0.0).pixel_values for i in plan.members]
  )
  assert want.dtype == np.float32 and len(want)
  got = np.asarray(learner.to_device(run.mesh, run.rules, mb, run.settings)["vision"].pixel_values)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got[: len(want)], want)
