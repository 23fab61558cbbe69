"""The RL learner as it was before `rl.learner` (the reference of benchmarks/rl_step.py and of
tests/test_rl_learner.py): every trajectory encoded up front and held on the host, one trajectory
per row, old and reference log-probs by two separate jitted passes read back to the host,
gradients summed outside jit with a host sync per microbatch.

    state, seconds = learn_plain(run, ro)    # run: an `rl.loop.RLRun`; its state is donated
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from codevision_jax.rl import advantages as adv_lib
from codevision_jax.rl import batch as batch_lib
from codevision_jax.rl import learner
from codevision_jax.rl import step as rl_step
from codevision_jax.sampling import trajectory as traj_lib

_JITS = {}


def _jits(run):
  """The plain steps, from the keywords `rl.learner.make_steps` bound (compiled once a run)."""
  if id(run) not in _JITS:
    bound = {k: run.steps.passes.__wrapped__.keywords[k] for k in ("graphdef", "rest", "options")}
    _JITS[id(run)] = (
      jax.jit(lambda p, f, mb: rl_step.logprobs(p, f, mb, **bound)),
      jax.jit(lambda p, f, mb: rl_step.microbatch_grads(p, f, mb, **bound)),
      jax.jit(
        lambda s, g, n: rl_step.apply_grads(s, g, n, **run.steps.apply.__wrapped__.keywords), donate_argnums=(0,)
      ),
    )
  return _JITS[id(run)]


def learn_plain(run, ro) -> tuple[dict, dict]:
  """One round's updates the plain way -> (new state, {"seconds", "real_token_share",
  "microbatches"})."""
  t0 = time.perf_counter()
  logprobs, grads_fn, apply = _jits(run)
  cfg = run.cfg
  adv = adv_lib.ESTIMATORS[cfg.algo.advantage](ro.scores, ro.group_ids, eps=cfg.algo.eps)
  examples = {}
  for i, traj in enumerate(ro.trajectories):
    if traj.finish_reason == traj_lib.Finish.ERROR or not traj.token_ids:
      continue
    ex = batch_lib.trajectory_example(traj, run.settings, float(adv[i]))
    if run.geometry.fits(np.array([[len(ex), len(ex.pixel_values), len(ex.image_grid_thw)]]))[0]:
      examples[i] = ex
  per = cfg.algo.mini_batch_prompts
  minibatches = []
  for start in range(0, len(np.unique(ro.group_ids)), per):
    members = [i for i in examples if start <= ro.group_ids[i] < start + per]
    if members:
      minibatches.append(
        batch_lib.microbatches(
          [examples[i] for i in members], run.geometry, run.model_config, run.pad_id, packing="none"
        )
      )
  state = run.state
  for mbs in minibatches:
    for mb in mbs:
      dev = learner.to_device(run.mesh, run.rules, mb)
      mb["old_logprobs"] = np.asarray(logprobs(state["params"], run.frozen, dev))
      mb["ref_logprobs"] = (
        np.asarray(logprobs(state["reference"], run.frozen, dev))
        if cfg.algo.kl_coef
        else np.zeros_like(mb["old_logprobs"])
      )
  for _ in range(cfg.algo.ppo_epochs):
    for mbs in minibatches:
      total, tokens = None, 0.0
      for mb in mbs:
        grads, s = grads_fn(state["params"], run.frozen, learner.to_device(run.mesh, run.rules, mb))
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        tokens += float(jax.device_get(s)["tokens"])
      train, _ = apply({k: state[k] for k in ("step", "params", "opt_state")}, total, jnp.float32(tokens))
      state = {**train, "reference": state["reference"]}
  jax.block_until_ready(state)
  real = sum(len(ex) for ex in examples.values())
  slots = sum(mb["input_ids"].size for mbs in minibatches for mb in mbs)
  return state, {
    "seconds": time.perf_counter() - t0,
    "real_token_share": real / max(slots, 1),
    "microbatches": sum(len(m) for m in minibatches),
  }
