"""The RL learner: one round's trajectories -> policy updates (`learn`), and its jitted steps.

    steps = make_steps(mesh, state_sh, graphdef=..., rest=..., options=..., tx=..., lr_schedule=...)
    state, metrics = learn(run, scored_rollouts)   # run: an `rl.loop.RLRun` holding `steps`

A round's usable trajectories are split into mini-batches of `algo.mini_batch_prompts` prompts'
groups. Each mini-batch is planned from sizes alone (`rl.batch.plan_microbatches`: several
trajectories to a row, microbatches closed by the rows and the patch budget) and its microbatches
are built one at a time when a pass needs them: images decoded, packed with uint8 pixels (a
quarter of the bytes to the device), put on the mesh and normalised there.

Before any update, one fused pass (`rl.step.old_and_ref_logprobs`) gives each microbatch its old
and reference log-probs, kept on device. With one PPO epoch the first mini-batch needs no such
pass: its old policy is the current one, and its gradient step runs the reference forward
itself. The gradients and metric sums of a mini-batch accumulate on device in one donated
buffer; nothing is read back to the host until the round's metrics.

Every trajectory fits: `check_fits` refuses, before the first round, buckets shorter than
`agent.max_total_tokens`, and `learner_geometry` raises the patch and image budgets to what one
trajectory within the rollout limits can hold (`trajectory_bound`). A microbatch takes the
smallest of a few patch budgets (`patch_budgets`, doubling up to rows full of image tokens) that
holds its images, so that its rows, not its patches, close it. A trajectory that still does not
fit (e.g. more input images than `agent.max_images`) is dropped and counted, or stops the round
(`data.drop_oversized`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from codevision_jax.data import geometry as geometry_lib
from codevision_jax.processing import image as image_lib
from codevision_jax.rl import advantages as adv_lib
from codevision_jax.rl import batch as batch_lib
from codevision_jax.rl import step as rl_step
from codevision_jax.sampling import trajectory as traj_lib
from codevision_jax.train import step as step_lib

log = logging.getLogger(__name__)

MISFITS = ("tokens", "patches", "images")
Geometry = geometry_lib.Geometry


# ---- the geometry ----------------------------------------------------------------------------------


def trajectory_bound(cfg, model_config, settings) -> tuple[int, int]:
  """(patches, images) one trajectory within the rollout limits can hold at most: its image
  tokens are tokens of the trajectory (at most `agent.max_total_tokens`), each merged token
  `spatial_merge_size`^2 patches; and at most `agent.max_images` images of at most
  `data.max_pixels` each."""
  merge = model_config.vision.spatial_merge_size**2
  patches = min(merge * cfg.agent.max_total_tokens, cfg.agent.max_images * settings.max_frame_patches)
  return patches, cfg.agent.max_images


def _round_up(n: int, shards: int) -> int:
  unit = 4 * shards // int(np.gcd(4, shards))
  return -(-n // unit) * unit


def patch_budgets(cfg, model_config, settings, shards: int = 1) -> tuple:
  """The learner's patch budgets (`rl.batch.patch_ladder`), multiples of 4 x `shards`: from
  `train.patch_budget`, raised where smaller to what one trajectory within the rollout limits
  can hold (`trajectory_bound`), doubling up to what `train.rows` full rows of image tokens
  hold (merge^2 x rows x the largest bucket), so that the rows, not the images, close a
  microbatch (a patch costs the frozen vision tower's forward, far less than a token's step)."""
  patches, _ = trajectory_bound(cfg, model_config, settings)
  low = _round_up(max(cfg.train.patch_budget, patches), shards)
  merge = model_config.vision.spatial_merge_size**2
  return batch_lib.patch_ladder(low, max(low, _round_up(merge * cfg.train.rows * max(cfg.train.buckets), shards)))


def learner_geometry(cfg, model_config, settings, shards: int = 1) -> geometry_lib.Geometry:
  """The learner's microbatch geometry: `train.rows` rows of `train.buckets`, up to the largest
  of `patch_budgets` patches, and `train.max_images` images raised where smaller to
  `agent.max_images` (with `trajectory_bound`, every trajectory of the rollouts fits)."""
  budgets = patch_budgets(cfg, model_config, settings, shards)
  if budgets[0] > cfg.train.patch_budget:
    log.info(
      "train.patch_budget %d is raised to %d: a trajectory within agent.max_total_tokens %d "
      "/ agent.max_images %d / data.max_pixels %d can hold that many patches",
      cfg.train.patch_budget,
      budgets[0],
      cfg.agent.max_total_tokens,
      cfg.agent.max_images,
      settings.max_pixels,
    )
  _, images = trajectory_bound(cfg, model_config, settings)
  return geometry_lib.Geometry(
    tuple(cfg.train.buckets), cfg.train.rows, budgets[-1], max(cfg.train.max_images, images), settings.max_frame_patches
  )


def check_fits(cfg, shards: int) -> None:
  """Before the first round: rows and patches split over the batch mesh axes, and the largest
  bucket holds a whole trajectory (`agent.max_total_tokens`)."""
  t = cfg.train
  geometry_lib.check_divisible(t.rows, t.patch_budget, shards, rows_key="train.rows", budget_key="train.patch_budget")
  if max(t.buckets) < cfg.agent.max_total_tokens:
    raise ValueError(
      f"train.buckets {tuple(t.buckets)} cannot hold a whole trajectory of "
      f"agent.max_total_tokens {cfg.agent.max_total_tokens}; add a bucket of at least that"
    )


def misfit(geometry: geometry_lib.Geometry, ex) -> list[tuple[str, str]]:
  """[(one of MISFITS, why)] of an example (or a [tokens, patches, images] size row) that the
  microbatch geometry cannot hold."""
  n, p, k = (
    (len(ex), len(ex.pixel_values), len(ex.image_grid_thw)) if hasattr(ex, "pixel_values") else (int(x) for x in ex)
  )
  out = []
  if n > geometry.buckets[-1]:
    out.append(("tokens", f"{n:,} tokens, more than the largest of train.buckets {tuple(geometry.buckets)}"))
  if p > geometry.patch_budget:
    out.append(
      (
        "patches",
        f"{p:,} image patches, more than train.patch_budget {geometry.patch_budget:,} (or lower data.max_pixels)",
      )
    )
  if k > geometry.max_images:
    out.append(("images", f"{k} images, more than train.max_images {geometry.max_images}"))
  return out


# ---- the jitted steps ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Steps:
  """The learner's jitted functions (see `rl.step`)."""

  passes: Callable  # (params, reference, frozen, mb, with_ref) -> old / ref log-probs, sums
  accumulate: Callable  # (acc, params, reference, frozen, mb, old_is_current, ref_in_step) -> acc
  apply: Callable  # (train state, acc) -> (train state, acc, metrics); both donated
  init: Callable  # (params) -> acc


def make_steps(mesh, state_sh: dict, *, graphdef, rest, options: rl_step.RLStepOptions, tx, lr_schedule) -> Steps:
  """The learner's steps over `mesh` (`state_sh`: the train state's shardings)."""
  bound = dict(graphdef=graphdef, rest=rest, options=options)
  replicated = NamedSharding(mesh, P())
  acc_sh = {
    "grads": state_sh["params"],
    "tokens": replicated,
    "sums": {k: replicated for k in rl_step.METRIC_SUMS + rl_step.PASS_SUMS},
  }
  train_sh = {k: state_sh[k] for k in ("step", "params", "opt_state")}
  return Steps(
    passes=jax.jit(functools.partial(rl_step.old_and_ref_logprobs, **bound), static_argnames=("with_ref",)),
    accumulate=jax.jit(
      functools.partial(rl_step.accumulate, **bound),
      out_shardings=acc_sh,
      static_argnames=("old_is_current", "ref_in_step"),
      donate_argnums=(0,),
    ),
    apply=jax.jit(
      functools.partial(rl_step.apply_accumulated, tx=tx, lr_schedule=lr_schedule),
      out_shardings=(train_sh, acc_sh, replicated),
      donate_argnums=(0, 1),
    ),
    init=jax.jit(rl_step.init_accumulator, out_shardings=acc_sh),
  )


# ---- one round ---------------------------------------------------------------------------------------


def to_device(mesh, rules, mb: dict, settings=None) -> dict:
  """A host microbatch (the same on every process) on the mesh; each device takes its slice.
  uint8 pixel values (`rl.batch.build`) travel as they are and become the float32 ones of
  `settings`' preprocessing there (`normalise_pixels`)."""
  host = {k: v for k, v in mb.items() if k != "image_grid_thw"}
  shardings = step_lib.batch_shardings(mesh, rules, host, stacked=False)
  out = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), host, shardings)
  pixels = out["vision"].pixel_values
  if pixels.dtype == np.uint8:
    if settings is None:
      raise ValueError("uint8 pixel values need the image settings to be normalised")
    out["vision"] = out["vision"].replace(pixel_values=normalise_pixels(settings)(pixels))
  return out


@functools.lru_cache(maxsize=None)
def _normaliser(image_mean: tuple, image_std: tuple, per_channel: int):
  table = image_lib.value_table(image_mean, image_std)

  def normalise(u8):
    channel = np.arange(u8.shape[1]) // per_channel
    return jax.numpy.asarray(table)[channel[None, :], u8.astype(np.int32)]

  return jax.jit(normalise)


def normalise_pixels(settings) -> Callable:
  """Jitted: uint8 pixel values [P, C*T*p*p] -> the float32 ones `preprocess_images` gives (one
  lookup in `image_lib.value_table`), on device, keeping the input's sharding."""
  return _normaliser(
    tuple(settings.image_mean), tuple(settings.image_std), settings.temporal_patch_size * settings.patch_size**2
  )


def _usable(run, ro, sizes) -> tuple[list, int, collections.Counter]:
  """(indices of the trajectories to train on, how many were dropped, why) (see the module
  docstring)."""
  keep, dropped, misfits = [], 0, collections.Counter()
  fits = run.geometry.fits(sizes)
  for i, traj in enumerate(ro.trajectories):
    if traj.finish_reason == traj_lib.Finish.ERROR or not traj.token_ids:
      continue
    if fits[i]:
      keep.append(i)
      continue
    dropped += 1
    why = misfit(run.geometry, sizes[i])
    misfits.update(k for k, _ in why)
    text = (
      f"trajectory {traj.id}{f' of {traj.origin}' if traj.origin else ''} does not fit the "
      f"microbatch geometry: {'; '.join(t for _, t in why)}"
    )
    if not run.cfg.data.get("drop_oversized", True):
      raise ValueError(
        f"{text}. Raise the setting named, or set --config.data.drop_oversized=True "
        "to drop such trajectories (counted: batch/dropped_trajectories in "
        "metrics.jsonl, the end summary); rerunning resumes from the last checkpoint"
      )
    log.warning("%s; not trained on (data.drop_oversized)", text)
  return keep, dropped, misfits


def learn(run, ro) -> tuple[dict, dict]:
  """Advantages, log-probs and the policy updates of one round -> (new state, metrics)."""
  cfg, steps, geometry = run.cfg, run.steps, run.geometry
  adv = adv_lib.ESTIMATORS[cfg.algo.advantage](ro.scores, ro.group_ids, eps=cfg.algo.eps)
  sizes = batch_lib.trajectory_sizes(ro.trajectories)
  keep, dropped, misfits = _usable(run, ro, sizes)
  packing = cfg.train.packing
  budgets = patch_budgets(cfg, run.model_config, run.settings, run.mesh.shape["data"] * run.mesh.shape["fsdp"])
  per, epochs, with_ref = cfg.algo.mini_batch_prompts, cfg.algo.ppo_epochs, bool(cfg.algo.kl_coef)
  minibatches = []  # Mini-batches: the groups of `mini_batch_prompts` prompts at a time.
  for start in range(0, len(np.unique(ro.group_ids)), per):
    members = [i for i in keep if start <= ro.group_ids[i] < start + per]
    if members:
      minibatches.append(batch_lib.plan_microbatches(members, sizes, geometry, packing, budgets))

  def device(plan):
    return to_device(
      run.mesh,
      run.rules,
      batch_lib.build(plan, ro.trajectories, adv, run.settings, geometry, run.model_config, run.pad_id),
      run.settings,
    )

  state = run.state
  acc = steps.init(state["params"])
  t0 = time.perf_counter()
  before = {}  # (mini-batch, microbatch) -> old and reference log-probs, on device
  for k, plans in enumerate(minibatches):
    if k == 0 and epochs == 1:
      continue  # Its old policy is the current one (`rl.step.accumulate`).
    for j, plan in enumerate(plans):
      out = steps.passes(state["params"], state["reference"], run.frozen, device(plan), with_ref=with_ref)
      acc = rl_step.add_sums(acc, {s: out.pop(s) for s in rl_step.PASS_SUMS})
      before[k, j] = out
  jax.block_until_ready(acc)
  logprob_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  update = {"grad_norm": 0.0, "learning_rate": 0.0}
  for _ in range(epochs):
    for k, plans in enumerate(minibatches):
      for j, plan in enumerate(plans):
        mb = device(plan)
        mb.update(before.get((k, j), {}))
        acc = steps.accumulate(
          acc,
          state["params"],
          state["reference"],
          run.frozen,
          mb,
          old_is_current=(k, j) not in before,
          ref_in_step=(k, j) not in before,
        )
      train_state = {s: state[s] for s in ("step", "params", "opt_state")}
      train_state, acc, update = steps.apply(train_state, acc)
      state = {**train_state, "reference": state["reference"]}
  sums = {k: float(v) for k, v in jax.device_get(acc["sums"]).items()}
  update = jax.device_get(update)
  planned = [p for plans in minibatches for p in plans]
  real, slots = batch_lib.token_slots(planned, sizes, geometry.rows)
  n = max(sums["tokens"], 1.0)
  metrics = {f"actor/{k}": sums[k] / n for k in rl_step.METRIC_SUMS if k != "tokens"}
  metrics.update(
    {
      "actor/grad_norm": float(update["grad_norm"]),
      "actor/learning_rate": float(update["learning_rate"]),
      "actor/logprob_mismatch": sums["mismatch"] / max(sums["mismatch_tokens"], 1.0),
      "actor/policy_tokens": sums["tokens"] / max(epochs, 1),
      "actor/updates": float(len(minibatches) * epochs),
      "batch/trained_trajectories": float(len(keep)),
      "batch/dropped_trajectories": float(dropped),
      **{f"batch/dropped_for_{k}": float(misfits[k]) for k in MISFITS},
      "learn/real_token_share": real / max(slots, 1),
      "learn/microbatches": float(len(planned)),
      "learn/real_patch_share": (
        sum(int(sizes[i, 1]) for p in planned for i in p.members) / max(sum(p.patch_budget for p in planned), 1)
      ),
      "time/logprobs_s": logprob_s,
      "time/update_s": time.perf_counter() - t0,
    }
  )
  return state, metrics
