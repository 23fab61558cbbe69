"""One RL round's updates (old and reference log-probs, clipped surrogate + KL, two mini-batches)
on 8 simulated devices (data, fsdp, tensor) equal the updates on one device."""

import jax
import numpy as np

from codevision_jax.data import synthetic
from codevision_jax.rl import rollouts
from codevision_jax.rl import loop
from configs import tiny_rl


def config(**mesh):
  c = tiny_rl.get_config()
  c.data.synthetic_size = 8
  c.rollout.prompts, c.rollout.group_size, c.rollout.slots = 4, 2, 2
  c.algo.mini_batch_prompts = 2
  c.optim.eps = 1e-6  # As the SFT sharding test: keeps Adam's update well conditioned.
  c.eval.every = 0
  c.mesh.shape.update(mesh)
  c.mesh.num_devices = int(np.prod(list(mesh.values())))
  return c


def rollout(run) -> loop.ScoredRollouts:
  """Expert trajectories of synthetic tasks (their assistant tokens as the policy's), with
  made-up sampler log-probs and scores."""
  convs = synthetic.generate(
    8, seed=5, kinds=("arrow",), transforms=("none", "rotate_180"), p_small=0.0
  )  # Two different trajectories in each of 4 groups.
  return rollouts.expert_rollouts(convs, run.tokenizer, run.settings, np.repeat(np.arange(4), 2))


def test_rl_update_on_8_devices_equals_one(tmp_path):
  one = loop.build(config(data=1, fsdp=1, tensor=1), str(tmp_path / "one"))
  eight = loop.build(config(data=2, fsdp=2, tensor=2), str(tmp_path / "eight"))
  kernel = eight.state["params"]["model"]["language_model"]["layers"][0]["mlp"]["gate_proj"]["kernel"]
  assert len(kernel.sharding.device_set) == 8
  before = jax.device_get(one.state["params"])
  s1, m1 = loop.learn(one, rollout(one))
  s8, m8 = loop.learn(eight, rollout(eight))
  assert m1["actor/updates"] == m8["actor/updates"] == 2
  assert m1["batch/trained_trajectories"] == 8
  for k in ("actor/pg_loss", "actor/kl", "actor/entropy", "actor/clipfrac", "actor/grad_norm"):
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-4, atol=1e-6, err_msg=k)
  p1, p8 = jax.device_get(s1["params"]), jax.device_get(s8["params"])
  # Float32 reordering of the sharded sums (measured max 3e-7; the updates move 4e-4).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6), p1, p8)
  assert int(s1["step"]) == 2
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p1, before))
  assert max(moved) > 1e-4  # The updates did something.
