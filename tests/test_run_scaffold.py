"""The run scaffold SFT and RL share (runtime.scaffold) on a toy state, the workdir layout
(runtime.layout) against what the checkpointer writes, and the policy's reseed."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from codevision_jax.models import build_model, presets
from codevision_jax.runtime import layout, scaffold
from codevision_jax.sampling.policy import ModelPolicy


def config(total: int, every: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "train": {
        "steps": total,
        "checkpoint_every": every,
        "keep_checkpoints": 5,
        "async_checkpoints": False,
        "resume_step": 0,
        "log_every": 1,
        "sigterm_grace_s": 0.0,
        "allow_config_change": False,
      }
    }
  )


def toy_state():
  state = {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.arange(4.0)}}
  frozen = {"v": jnp.ones((2,))}
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return state, frozen, jax.tree.map(lambda _: sh, state), jax.tree.map(lambda _: sh, frozen)


def run_steps(workdir, total, every, hooks=()):
  """A toy loop on the scaffold: each step adds 1 to the parameters."""
  cfg = config(total, every)
  state, frozen, state_sh, frozen_sh = toy_state()
  with scaffold.Scaffold(cfg, workdir, unit="step", total=total, jsonl=True) as sc:
    resumed = sc.restore(state, frozen, state_sh, frozen_sh)
    if resumed is not None:
      state, frozen = resumed.state, resumed.frozen
    sc.open()
    for step in range(sc.start, total):
      state = {"step": state["step"] + 1, "params": {"w": state["params"]["w"] + 1}}
      line = {"step": step + 1, "w0": float(state["params"]["w"][0])}
      sc.scalars(step + 1, line)
      sc.append([line], last=line)
      assert sc.end_step(step + 1, state, frozen, {"next": step + 1}, hooks) is None
  return sc.result(None, state, frozen)


def test_the_scaffold_saves_due_and_final_steps_resumes_and_returns_a_typed_result(tmp_path, caplog):
  workdir = str(tmp_path)
  seen = []
  result = run_steps(workdir, total=3, every=2, hooks=[lambda step, ckpt: seen.append(step)])
  assert seen == [1, 2, 3]
  # Due (every 2) and the last step, at the layout's paths, each with every item.
  assert sorted(os.listdir(layout.checkpoints(workdir))) == ["2", "3"]
  for name in layout.ITEMS:
    assert os.path.isdir(layout.item(layout.step_dir(workdir, 3), name)), name
  with open(layout.saved_config(layout.step_dir(workdir, 3))) as f:
    assert json.load(f) == config(3, 2).to_dict()
  assert [h["step"] for h in result.history] == [1, 2, 3] and result.last["step"] == 3
  assert result.steps == 3 and result.dropped is None
  with open(layout.metrics(workdir)) as f:
    assert [json.loads(l)["w0"] for l in f] == [1.0, 2.0, 3.0]
  assert os.listdir(layout.tensorboard(workdir))

  # Three more steps resume from step 3's parameters; a run that is done trains nothing.
  more = run_steps(workdir, total=5, every=2)
  assert [h["step"] for h in more.history] == [4, 5]
  np.testing.assert_array_equal(np.asarray(more.state["params"]["w"]), np.arange(4.0) + 5)
  with caplog.at_level(logging.WARNING):
    done = run_steps(workdir, total=5, every=2)
  assert done.history == [] and done.last == {}
  assert any(
    "the checkpoint is at step 5 and the run has 5 steps: nothing to train (raise "
    "--config.train.steps" in r.getMessage()
    for r in caplog.records
  )
  assert scaffold.latest_step(workdir) == 5 and scaffold.latest_step(str(tmp_path / "none")) is None


def test_reseed_sets_the_sampling_streams_and_restores_the_policy_temperature():
  model = build_model(presets.qwen2_5_vl_tiny(), seed=0)

  def sample(policy):
    policy.start(0, 0, np.arange(10, 22))
    tokens, _ = policy.decode([0], [8])[0]
    return list(tokens)

  policy = ModelPolicy(
    model, stop_ids=[], num_slots=1, capacity=64, chunk=16, steps_per_call=8, temperature=1.0, seed=0
  )
  first = sample(policy)
  policy.reseed(1)
  other = sample(policy)
  policy.reseed(0)
  assert sample(policy) == first and other != first  # The streams are the seed's alone.
  policy.reseed(0, temperature=0.0)
  assert policy.sampling["temperature"] == 0.0
  greedy = sample(policy)
  policy.reseed(5, temperature=0.0)
  assert sample(policy) == greedy  # Greedy: the seed does not matter.
  policy.reseed(0)
  assert policy.sampling["temperature"] == 1.0 and sample(policy) == first
