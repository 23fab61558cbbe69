"""The GRPO loop: rollouts through the code tool, the CodeVision reward, clipped policy updates.

    result = train(cfg, workdir, executor_urls=["http://127.0.0.1:8700"])

Each round:
1. the next `rollout.prompts` records, each `rollout.group_size` times, go through the agent loop
   with the current policy on the decode engine (sampling seed: a function of `seed` and the
   round), the code running on the executor services;
2. every trajectory is scored (`rl.scoring`: rule, then the optional judge; the dense tool
   reward) and advantages are normalised within each prompt's group (`algo.advantage`);
3. the trajectories are packed into microbatches; the log-probs of the sampled tokens under the
   learner's current parameters (the "old" policy) and under the frozen reference are computed
   before any update (the sampler's own log-probs are kept, their mismatch is a metric);
4. `algo.ppo_epochs` passes over mini-batches of `algo.mini_batch_prompts` prompts' groups, each
   an optimizer step on the token mean of the clipped surrogate plus `kl_coef` times the KL over
   the mini-batch's policy tokens;
5. the sampler gets the new parameters on device (cast to its dtype; no host trip, no recompile).

Trajectories that ended in an infrastructure error (the executor unreachable, a record that cannot
be used) are scored and counted but not trained on; when more than `executor.max_error_fraction`
of a round's tool calls could not reach a service, the run stops with a message that says so.

The trainer's state (policy, optimizer, reference, step), the prompt iterator and the config are an
Orbax checkpoint every `train.checkpoint_every` rounds; rerunning in the same workdir resumes, and
on CPU a killed and resumed run equals an uninterrupted one (the sampling seed of a round depends
only on the seed and the round). Metrics: TensorBoard in `<workdir>/tensorboard`, one JSON line
per round in `<workdir>/metrics.jsonl`, a few trajectories of each round (with their reward parts)
in `<workdir>/rollouts/round_NNNNN/trajectories.jsonl`, images beside them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codevision_jax.data import geometry as geometry_lib
from codevision_jax.execution.client import ExecutorClient, healthy_services
from codevision_jax.models import lora as lora_lib
from codevision_jax.rl import advantages as adv_lib
from codevision_jax.rl import learner
from codevision_jax.rl import replicas
from codevision_jax.rl import rollouts
from codevision_jax.rl import step as rl_step
from codevision_jax.rl.rollouts import ScoredRollouts
from codevision_jax.sampling import trajectory as traj_lib
from codevision_jax.sampling.policy import ModelPolicy
from codevision_jax.runtime import checkpointing, layout, optimizer as optim_lib
from codevision_jax.runtime import run_setup, scaffold
from codevision_jax.train import step as step_lib

log = logging.getLogger(__name__)

RoundHook = scaffold.StepHook
"""Called after every round, once its checkpoint (if due) has been started: (round, checkpointer)."""


# ---- set-up --------------------------------------------------------------------------------------


def check_records(records: Sequence, *, skip_bad: bool) -> list:
  """RL records need a ground truth; a record without one raises (naming it), or is dropped and
  counted with `skip_bad`."""
  good = [r for r in records if r.ground_truth not in (None, "")]
  bad = [r for r in records if r.ground_truth in (None, "")]
  if bad and not skip_bad:
    where = getattr(bad[0], "origin", "") or "a record"
    raise ValueError(
      f"{where}: no ground truth (field reward_model.ground_truth, or ground_truth); "
      f"{len(bad)} of {len(records)} records lack one. The reward needs it: fix the "
      "data, or pass --config.data.skip_bad=True to skip those records"
    )
  if bad:
    log.warning("skipping %d of %d records without a ground truth", len(bad), len(records))
  return good


def check_config(cfg, mesh) -> None:
  """Settings that cannot work, found before the first round."""
  if cfg.train.packing not in ("auto",) + geometry_lib.PACKING:
    raise ValueError(f"train.packing {cfg.train.packing!r} is not one of {('auto',) + geometry_lib.PACKING}")
  learner.check_fits(cfg, mesh.shape["data"] * mesh.shape["fsdp"])
  if cfg.rollout.prompts % cfg.algo.mini_batch_prompts:
    raise ValueError(
      f"rollout.prompts {cfg.rollout.prompts} must be a multiple of "
      f"algo.mini_batch_prompts {cfg.algo.mini_batch_prompts}"
    )
  if cfg.algo.advantage not in adv_lib.ESTIMATORS:
    raise ValueError(f"algo.advantage {cfg.algo.advantage!r} is not one of {sorted(adv_lib.ESTIMATORS)}")
  if cfg.rollout.slots < 1 or cfg.rollout.group_size < 1:
    raise ValueError("rollout.slots and rollout.group_size must be at least 1")
  if cfg.eval.every and cfg.data.source != "synthetic" and not cfg.eval.paths:
    raise ValueError(
      "eval.every is set but eval.paths is empty: held-out evaluation needs its own "
      "records (--config.eval.paths=heldout.parquet), or set eval.every=0"
    )


MODEL_FIELDS = ("model.tokenizer", "model.vocab_size", "model.preset", "model.path", "model.scan_layers")


def _model_differences(step_dir: str, cfg) -> str:
  """How the model fields of the SFT run's saved config (`<step>/config/metadata`) differ from
  `cfg`'s, e.g. "model.vocab_size 512 there, 600 here"; "" when they agree or cannot be read."""
  try:
    with open(layout.saved_config(step_dir), encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return ""
  out = []
  for field in MODEL_FIELDS:
    key = field.split(".")[1]
    there, here = saved.get("model", {}).get(key), cfg.model.get(key)
    if there != here:
      out.append(f"{field} {there!r} there, {here!r} here")
  return "; ".join(out)


def restore_sft_params(sft_workdir: str, params: dict, frozen: dict, params_sh, frozen_sh, cfg=None):
  """The trained parameters of an SFT run's latest checkpoint (`train.loop`), placed like
  `params` / `frozen`; the optimizer state is not read. A checkpoint of another model raises
  ValueError naming the model fields (`cfg`'s against the SFT run's) that differ."""
  step = scaffold.latest_step(sft_workdir)
  if step is None:
    raise FileNotFoundError(
      f"init.sft_workdir {sft_workdir}: no checkpoint in "
      f"{layout.checkpoints(sft_workdir)}; run `python -m launch.sft` there "
      "first, or leave init.sft_workdir empty"
    )
  step_dir = os.path.abspath(layout.step_dir(sft_workdir, step))
  try:
    return checkpointing.restore_items(
      step_dir,
      {
        layout.STATE: {"params": checkpointing.abstract_like(params, params_sh)},
        layout.FROZEN: checkpointing.abstract_like(frozen, frozen_sh),
      },
    )
  except ValueError as e:
    differ = _model_differences(step_dir, cfg) if cfg is not None else ""
    reason = str(e).strip().splitlines()[0][:300]
    if "strict=False" in reason or "shape" in reason.lower():  # Orbax: an array of another shape.
      reason = (
        "its parameters have other shapes than this run's model (a different vocabulary "
        "from model.tokenizer / model.vocab_size, or another model size)"
      )
    raise ValueError(
      f"init.sft_workdir {sft_workdir}: the SFT checkpoint (step {step}) does not fit this run's "
      f"model: {reason}"
      + (f". The model settings differ: {differ}" if differ else "")
      + ". Use the SFT run's model settings (model.tokenizer and model.vocab_size: the same "
      "vocabulary; model.preset or model.path; model.scan_layers: stacked and per-layer "
      "parameters are different checkpoints), or export the SFT run to HF (python -m "
      "launch.export) and start from it with model.path"
    ) from None


@dataclasses.dataclass
class RLRun:
  """Everything an RL run is made of, before the first round (see `build`)."""

  cfg: Any
  mesh: Any
  rules: tuple
  tokenizer: Any
  model_config: Any
  settings: Any
  records: list
  rounds: int  # `train.rounds`, or `data.num_epochs` passes over the records when that is 0
  policy: ModelPolicy
  param_template: nnx.State  # the sampler's parameter structure, abstract (shapes, its dtypes)
  geometry: learner.Geometry  # the learner's microbatch geometry (`rl.learner.learner_geometry`)
  state: dict  # {"step", "params", "opt_state", "reference"}, on the mesh
  frozen: dict
  state_sh: dict
  frozen_sh: dict
  steps: learner.Steps  # the learner's jitted steps (fused log-prob pass, accumulation, update)
  sampler_copy: dict  # "params" / "frozen": learner arrays -> the sampler's copy, in its dtype
  sampler_frozen: dict  # the sampler's copy of the frozen parameters (made once)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_token_id


def build(cfg, workdir: str) -> RLRun:
  """Mesh, tokenizer, model, records, optimizer, reference, the sampler; checks the config."""
  parts = run_setup.run_parts(cfg, workdir, kind="rl", check=check_config)
  mesh, rules, tokenizer, model, settings = parts.mesh, parts.rules, parts.tokenizer, parts.model, parts.settings
  mc, source = model.config, parts.source
  records = check_records([source[i] for i in range(len(source))], skip_bad=cfg.data.skip_bad)
  if len(records) < cfg.rollout.prompts:
    raise ValueError(
      f"the data has {len(records)} usable records, fewer than rollout.prompts {cfg.rollout.prompts} a round needs"
    )
  if not cfg.train.rounds and not cfg.data.num_epochs:
    raise ValueError("set train.rounds, or data.num_epochs for that many passes over the records")

  # The decode engine runs the layers as they are: rematerialisation is the learner's (an
  # `nnx.remat` layer cannot run inside the decode loop), so the sampler keeps the plain graph.
  sampler_graphdef = nnx.graphdef(model)
  rounds = cfg.train.rounds or cfg.data.num_epochs * len(records) // cfg.rollout.prompts
  steps_per_round = cfg.rollout.prompts // cfg.algo.mini_batch_prompts * cfg.algo.ppo_epochs
  tx = optim_lib.make_optimizer(cfg.optim, rounds * steps_per_round)
  parts = scaffold.split_model(model, cfg, tx, mesh, rules)
  graphdef, rest, frozen_sh = parts.graphdef, parts.rest, parts.frozen_sh
  state_sh = {**parts.state_sh, "reference": parts.state_sh["params"]}
  params_state, frozen_state = parts.params, parts.frozen
  params, frozen = nnx.to_pure_dict(parts.params), nnx.to_pure_dict(parts.frozen)
  # A checkpoint in the workdir is resumed (`_train`) and replaces what the SFT run would give:
  # the SFT run is read only for a fresh start, so its log line never precedes "resumed".
  resuming = scaffold.latest_step(workdir) is not None
  if cfg.init.sft_workdir and not resuming and lora_lib.settings(cfg).enabled:
    # LoRA: the SFT run (its adapters merged, if any) is the frozen base; fresh adapters train.
    from codevision_jax.runtime import lora_init

    frozen = lora_init.base_from_run(cfg.init.sft_workdir, frozen, frozen_sh, lora_lib.settings(cfg))
    log.info("initialised the LoRA base from the SFT run in %s", cfg.init.sft_workdir)
  elif cfg.init.sft_workdir and not resuming:
    restored = restore_sft_params(cfg.init.sft_workdir, params, frozen, state_sh["params"], frozen_sh, cfg)
    params, frozen = restored["state"]["params"], restored["frozen"]
    log.info("initialised from the SFT run in %s", cfg.init.sft_workdir)
  ref_dtype = run_setup.DTYPES[cfg.algo.ref_dtype]
  state = {
    **scaffold.init_state(params, tx, state_sh),
    # With LoRA the reference is the base, adapters off (lora_b zero): adapter-sized.
    "reference": jax.jit(
      lambda p: lora_lib.adapters_off(step_lib.cast_floats(p, ref_dtype)), out_shardings=state_sh["reference"]
    )(params),
  }

  options = rl_step.RLStepOptions(
    compute_dtype=run_setup.DTYPES[cfg.train.compute_dtype],
    loss_chunk=cfg.train.loss_chunk,
    clip_low=cfg.algo.clip_low,
    clip_high=cfg.algo.clip_high,
    clip_c=cfg.algo.clip_c,
    kl_coef=cfg.algo.kl_coef,
    kl_kind=cfg.algo.kl_kind,
  )
  steps = learner.make_steps(
    mesh,
    state_sh,
    graphdef=graphdef,
    rest=rest,
    options=options,
    tx=tx,
    lr_schedule=optim_lib.schedule(cfg.optim, rounds * steps_per_round),
  )

  sampler_dtype = run_setup.DTYPES[cfg.rollout.param_dtype or cfg.model.param_dtype]
  cast = lambda tree: jax.tree.map(jnp.copy, step_lib.cast_floats(tree, sampler_dtype))
  if jax.process_count() == 1:  # The sampler shares the learner's mesh.
    sampler_model, copy = nnx.merge(sampler_graphdef, nnx.state(model)), jax.jit(cast)
    sampler_copy = {"params": copy, "frozen": lora_lib.shared_or(copy, sampler_dtype)}
  else:  # Each process samples on its own replica (rl.replicas).
    sampler_model, sampler_copy = _replica(sampler_graphdef, params_state, frozen_state, rest, mesh, rules, cast)
  # The sampler's parameter structure in its dtype, without arrays: nothing built here stays
  # pinned by it (the build-time or restored learner arrays, an old sampler copy).
  template = jax.eval_shape(lambda s: step_lib.cast_floats(s, sampler_dtype), nnx.state(sampler_model, nnx.Param))
  sampler_frozen = sampler_copy["frozen"](frozen)
  policy = rollouts.build_policy(
    cfg,
    sampler_model,
    tokenizer,
    rules=rules,
    params=_sampler_state(template, sampler_frozen, sampler_copy["params"](params)),
  )
  del model, sampler_model, params_state, frozen_state
  policy.release()  # The KV cache exists only while rollouts run.
  return RLRun(
    cfg=cfg,
    mesh=mesh,
    rules=rules,
    tokenizer=tokenizer,
    model_config=mc,
    settings=settings,
    records=records,
    rounds=rounds,
    policy=policy,
    param_template=template,
    geometry=learner.learner_geometry(cfg, mc, settings, mesh.shape["data"] * mesh.shape["fsdp"]),
    state=state,
    frozen=frozen,
    state_sh=state_sh,
    frozen_sh=frozen_sh,
    steps=steps,
    sampler_copy=sampler_copy,
    sampler_frozen=sampler_frozen,
  )


def _replica(graphdef, params, frozen, rest, mesh, rules, cast):
  """This process's sampler model, on its local devices and in the sampler's dtype, and the
  copies that refresh it: the learner's arrays resharded device to device into the replica layout
  (`rl.replicas`)."""
  placements = [replicas.ReplicaPlacement(s, mesh, rules) for s in (params, frozen, rest)]
  local = []
  for state, placement, fn in zip((params, frozen, rest), placements, (cast, cast, None)):
    copy = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(copy, placement.localize(placement.reshard(fn)(nnx.to_pure_dict(state))))
    local.append(copy)
  copies = {}
  for name, placement in zip(("params", "frozen"), placements):
    jitted = placement.reshard(cast)
    copies[name] = lambda tree, jitted=jitted, placement=placement: placement.localize(jitted(tree))
  return nnx.merge(graphdef, *local), copies


def _sampler_state(template: nnx.State, *parts: dict) -> nnx.State:
  """The sampler's `nnx.Param` state: `template`'s structure with the arrays of `parts` (pure
  dicts of disjoint subtrees: the frozen copy, the trainable copy)."""
  state = jax.tree.map(lambda x: x, template)
  for part in parts:
    nnx.replace_by_pure_dict(state, part)
  return state


def drop_sampler_params(run: RLRun) -> None:
  """Frees the sampler's copy of the trainable parameters (stale once the learner updates) and its
  KV cache, so that neither is held while the learner runs; `hand_to_sampler` makes the new copy."""
  # The sampler's own copy (cast_floats + copy) goes; its frozen copy (possibly the learner's own
  # frozen arrays, when they share a dtype) is kept.
  run.policy.delete_params(keep=run.sampler_frozen)


def hand_to_sampler(run: RLRun, params: dict, frozen: dict | None = None) -> None:
  """The sampler takes a copy of the learner's parameters in its dtype, made on device (the
  learner's own buffers are donated to its next update), after its old copy is freed. The frozen
  parameters never change: they are copied again only when given (on resume)."""
  drop_sampler_params(run)
  if frozen is not None:
    run.sampler_frozen = run.sampler_copy["frozen"](frozen)
  run.policy.update_params(_sampler_state(run.param_template, run.sampler_frozen, run.sampler_copy["params"](params)))


def prompt_iterator(cfg, num_records: int, state: dict | None = None):
  """A checkpointable Grain iterator of record-index batches: each epoch a fresh shuffle of the
  records (a function of data.seed and the epoch), `rollout.prompts` indices per round."""
  import grain  # Deferred: only training needs it.

  ds = (
    grain.MapDataset.range(num_records)
    .shuffle(seed=cfg.data.seed)
    .repeat()
    .batch(cfg.rollout.prompts, drop_remainder=True)
  )
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
  if state is not None:
    it.set_state(state)
  return it


# ---- one round -------------------------------------------------------------------------------------


async def rollout(
  run: RLRun, records: Sequence, *, samples: int, seed: int, client, judge=None, temperature: float | None = None
) -> ScoredRollouts:
  """Each record `samples` times through the agent loop (sampling seed `seed`), then scored
  (`rl.rollouts.rollout`: each answer as its trajectory finishes).

  With several processes each rolls out and scores its own contiguous share of `records` on its
  sampler replica, and then every process holds all of them: trajectory ids, and so the sampling
  streams, are those of a one-process run."""
  policy = run.policy
  policy.reseed(seed, temperature=temperature)  # None: rollout.temperature, the policy's own.
  lo, hi = replicas.share(len(records))
  ro = await rollouts.rollout(
    policy,
    [r for r in records[lo:hi] for _ in range(samples)],
    tokenizer=run.tokenizer,
    client=client,
    settings=run.settings,
    agent=rollouts.agent_config(run.cfg),
    group_ids=np.repeat(np.arange(lo, hi), samples),
    judge=judge,
    reward=rollouts.reward_options(run.cfg),
    first_id=lo * samples,
  )
  if jax.process_count() > 1:
    ro = ScoredRollouts.concatenate(replicas.allgather_objects(ro), ro.agent_stats)
  return ro


def round_seed(seed: int, round_index: int) -> int:
  """The sampling seed of a round: depends only on the run's seed and the round."""
  return int(jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(seed), round_index), (), 0, 2**31 - 1))


def check_executor(ro: ScoredRollouts, max_error_fraction: float, urls: Sequence[str], round_index: int) -> None:
  """Raises when more than `max_error_fraction` of the round's tool calls could not reach a
  service."""
  calls = [c for t in ro.trajectories for c in t.tool_calls]
  failed = sum(c.status == traj_lib.CallStatus.EXECUTOR_ERROR for c in calls)
  if calls and failed / len(calls) > max_error_fraction:
    example = next(c.error for c in calls if c.status == traj_lib.CallStatus.EXECUTOR_ERROR)
    raise RuntimeError(
      f"round {round_index}: {failed} of {len(calls)} tool calls could not reach the executor "
      f"service(s) {', '.join(urls)} (for example: {example}). Check that the services are up "
      "(GET /healthz), then rerun the same command to resume from the last checkpoint; "
      "executor.max_error_fraction sets how many failures a round tolerates"
    )


def check_errors(ro: ScoredRollouts, round_index: int) -> None:
  """Raises when every trajectory of the round ended in an error (nothing to train on: a setting
  that cannot work, such as prompts longer than agent.max_total_tokens); warns when some did."""
  errors = [t for t in ro.trajectories if t.finish_reason == traj_lib.Finish.ERROR]
  if not errors:
    return
  first = errors[0]
  where = f"{first.origin}: " if first.origin else ""
  if len(errors) == len(ro.trajectories):
    raise RuntimeError(
      f"round {round_index}: all {len(errors)} trajectories ended in an error, so "
      f"there is nothing to train on; the first: {where}{first.error}"
    )
  log.warning(
    "round %d: %d of %d trajectories ended in an error and are not trained on (the first: %s%s)",
    round_index,
    len(errors),
    len(ro.trajectories),
    where,
    first.error,
  )


# The learner (old and reference log-probs, the updates): `rl.learner`.
MISFITS, learn, misfit = learner.MISFITS, learner.learn, learner.misfit


# ---- metrics ---------------------------------------------------------------------------------------


def rollout_metrics(ro: ScoredRollouts, prefix: str, *, timings: bool = False) -> dict:
  """The rollouts' summary (`rl.rollouts.SUMMARY`) as `<prefix>/...` metrics; with `timings`, also
  the time split as `time/...` (rollout, generation, waiting on tools, scoring, mean tool call)
  and `<prefix>/sampler_idle_fraction`."""
  summary = ro.summary(timings=timings)
  out = rollouts.metrics(summary, prefix)
  if timings:
    t = summary["time"]
    out.update({f"time/{k}": v for k, v in t.items() if k.endswith("_s") and v is not None})
    out[f"{prefix}/sampler_idle_fraction"] = t["sampler_idle_fraction"]
  return out


def _save_rollouts(workdir: str, round_index: int, ro: ScoredRollouts, k: int, tokenizer) -> None:
  """The round's first `k` trajectories (tokens, with their reward parts in `metadata`) and their
  readable transcripts, under `<workdir>/rollouts/round_NNNNN/`."""
  if k <= 0:
    return
  keep = ro.trajectories[:k]
  for t, p in zip(keep, ro.parts):
    t.metadata["reward"] = p
  directory = layout.round_dir(workdir, round_index)
  traj_lib.save_jsonl(keep, os.path.join(directory, "trajectories.jsonl"))
  rollouts.write_transcripts(os.path.join(directory, "transcripts.jsonl"), tokenizer, keep, ro.parts)


# ---- the loop --------------------------------------------------------------------------------------


def train(cfg, workdir: str, *, executor_urls: Sequence[str], hooks: Sequence[RoundHook] = ()) -> scaffold.RunResult:
  """Runs (or resumes) GRPO -> `scaffold.RunResult` (history: the metrics of this process's
  rounds, and round 0 when held-out evaluation runs before training; last: the last of them;
  run: the `RLRun`). `hooks` run after every round. On SIGTERM: a checkpoint, then `Preempted`
  (exit status 75, requeue)."""
  result, stopped = asyncio.run(_train(cfg, workdir, list(executor_urls), hooks))
  if stopped is not None:  # Saved and stopped on SIGTERM: exit for a requeue.
    raise stopped
  return result


def eval_records(cfg) -> list:
  """The held-out prompts: `eval.paths`, or synthetic tasks of the data's kind with `eval.seed`."""
  data = cfg.data.copy_and_resolve_references()
  with data.unlocked():
    if cfg.eval.paths:
      data.source, data.paths = "files", cfg.eval.paths
    data.synthetic_size, data.synthetic_seed = cfg.eval.size, cfg.eval.seed
  source = run_setup.conversation_source(data, kind="rl")
  return check_records([source[i] for i in range(min(len(source), cfg.eval.size))], skip_bad=True)


async def evaluate(run: RLRun, records: Sequence, client, judge=None) -> ScoredRollouts:
  """The current policy on held-out records (`eval.samples` each, at `eval.temperature`, with a
  fixed seed so evaluations compare)."""
  return await rollout(
    run,
    records,
    samples=run.cfg.eval.samples,
    seed=run.cfg.eval.seed,
    client=client,
    judge=judge,
    temperature=run.cfg.eval.temperature,
  )


async def _train(cfg, workdir: str, urls: list, hooks):
  """-> (the run's result, the `Preempted` to raise or None)."""
  if not urls:
    raise ValueError(
      "no executor service: pass executor_urls (launch.rl starts a local one when executor.urls is empty)"
    )
  urls = await healthy_services(urls)
  run = build(cfg, workdir)
  with scaffold.Scaffold(cfg, workdir, unit="round", total=run.rounds, jsonl=True) as sc:
    resumed = sc.restore(run.state, run.frozen, run.state_sh, run.frozen_sh)
    data_state = None
    if resumed is not None:
      run.state, run.frozen, data_state = resumed.state, resumed.frozen, resumed.data_state
      hand_to_sampler(run, run.state["params"], run.frozen)
      sc.resumed_from()
    prompts = prompt_iterator(cfg, len(run.records), data_state)
    held_out = eval_records(cfg) if cfg.eval.every else []
    sc.open()
    async with ExecutorClient(urls, deadline_s=cfg.executor.call_deadline_s) as client, rollouts.judge(cfg) as judge:
      if held_out and cfg.eval.get("before_training") and sc.start == 0:
        line = {"round": 0, **rollout_metrics(await evaluate(run, held_out, client, judge), "eval")}
        sc.scalars(0, line)
        sc.append([line], last=line)
      stopped = await _rounds(run, sc, prompts, held_out, urls, client, judge, hooks)
  return sc.result(run, run.state, run.frozen), stopped


async def _rounds(run: RLRun, sc: scaffold.Scaffold, prompts, held_out, urls, client, judge, hooks):
  """The rounds from `sc.start` on (rollout -> score -> learn) -> the `Preempted` to raise, or
  None; `run.state` is the learner's state after the last."""
  cfg = run.cfg
  for r in range(sc.start, run.rounds):
    t_round = time.perf_counter()
    records = [run.records[i] for i in next(prompts)]
    ro = await rollout(
      run, records, samples=cfg.rollout.group_size, seed=round_seed(cfg.seed, r), client=client, judge=judge
    )
    check_executor(ro, cfg.executor.max_error_fraction, urls, r + 1)
    check_errors(ro, r + 1)
    drop_sampler_params(run)  # Neither the KV cache nor a stale copy is held while learning.
    run.state, m = learn(run, ro)
    t = time.perf_counter()
    hand_to_sampler(run, run.state["params"])
    m["time/handoff_s"] = time.perf_counter() - t
    m.update(rollout_metrics(ro, "rollout", timings=True))
    m["time/round_s"] = time.perf_counter() - t_round
    done = r + 1
    if cfg.eval.every and (done % cfg.eval.every == 0 or done == run.rounds):
      ev = await evaluate(run, held_out, client, judge)
      m.update(rollout_metrics(ev, "eval"))
    if judge is not None:  # Counts since the start: replies that did not parse, and so on.
      m.update({f"judge/{k}": float(v) for k, v in dataclasses.asdict(judge.stats).items()})
    _save_rollouts(sc.workdir, done, ro, cfg.train.save_rollouts if sc.is_primary else 0, run.tokenizer)
    sc.scalars(done, m)
    line = {"round": done, **m}
    sc.append([line], last=line)
    sc.progress(
      done,
      m["actor/policy_tokens"] / max(m["time/round_s"], 1e-9),
      reward=m["rollout/reward/score"],
      acc=m["rollout/accuracy"],
      tools=m["rollout/tool_calls_per_trajectory"],
    )
    stopped = sc.end_step(done, run.state, run.frozen, prompts.get_state(), hooks)
    if stopped is not None:
      return stopped
  return None
