"""The SFT training loop: build everything from the config, then run the jitted step on the run
scaffold (`runtime.scaffold`: resume, checkpoints, summaries, progress, SIGTERM).

    result = train(config, workdir)   # scaffold.RunResult: result.state, result.history, ...

Restarting with the same workdir resumes from the latest checkpoint (parameters, optimizer
state, step and data iterator), and gives the same result as an uninterrupted run: the data
order is a function of (seed, epoch) and the step has no randomness.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
import zlib
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from codevision_jax import distributed_env
from codevision_jax.data import geometry, pipeline, size_cache
from codevision_jax.runtime import layout, metrics as metrics_lib, optimizer as optim_lib
from codevision_jax.runtime import run_setup, scaffold
from codevision_jax.train import step as step_lib

log = logging.getLogger(__name__)


# ---- building blocks ------------------------------------------------------------------------------


def record_origin(source, index: int) -> str:
  """Record `index`'s name in messages: "file:index" (or the TFDS set and index)."""
  origins = source.origins() if hasattr(source, "origins") else None
  return (origins[index] if origins else getattr(source[index], "origin", "")) or f"record {index}"


def dropped_records(cfg, sizes, source) -> list[dict]:
  """The records no batch can hold, each with its sizes and why: refused (ValueError naming them
  and the setting that fits them) unless `data.drop_oversized`; records skipped as bad
  (`data.skip_bad`) are counted too."""
  spec = pipeline.BatchSpec.from_config(cfg)
  if not cfg.data.get("drop_oversized", False):
    pipeline.refuse_oversized(sizes, spec, lambda i: record_origin(source, i))
  why = dict(pipeline.oversized(sizes, spec))
  out = []
  for i in np.flatnonzero(~spec.fits(sizes)):
    n, p, k = (int(x) for x in sizes[i])
    out.append(
      {
        "record": record_origin(source, int(i)),
        "tokens": n,
        "patches": p,
        "images": k,
        "why": why.get(int(i), "an image that cannot be used (data.skip_bad)"),
      }
    )
  return out


def make_plan(cfg, sizes, total_steps_hint: int = 0) -> pipeline.BatchPlan:
  spec = pipeline.BatchSpec.from_config(cfg)
  plan = pipeline.BatchPlan(sizes, spec, seed=cfg.data.seed, num_epochs=cfg.data.num_epochs)
  if total_steps_hint > len(plan):  # More steps than epochs: plan enough further epochs.
    epochs = cfg.data.num_epochs * math.ceil(total_steps_hint / len(plan)) + 1
    plan = pipeline.BatchPlan(sizes, spec, seed=cfg.data.seed, num_epochs=epochs)
  return plan


def record_sizes(data_cfg, source, tokenizer, settings, workdir: str):
  """Every record's tokens, patches and images (`size_cache.record_sizes`): read from the size
  cache (`data.size_cache`) or sized in `data.workers` processes; process 0 writes the cache."""
  return size_cache.record_sizes(
    source,
    tokenizer,
    settings,
    cache_dir=size_cache.cache_dir(data_cfg, workdir),
    skip_bad=data_cfg.skip_bad,
    workers=data_cfg.get("workers", 0),
    process_index=jax.process_index(),
    barrier=functools.partial(distributed_env.barrier, "size_cache"),
  )


def check_geometry(cfg, mesh):
  """Batch rows and patches are split over the batch mesh axes: sizes must divide evenly."""
  geometry.check_divisible(
    cfg.data.batch_size,
    cfg.data.patch_budget,
    mesh.shape["data"] * mesh.shape["fsdp"],
    rows_key="data.batch_size",
    budget_key="data.patch_budget",
  )


def to_global(batch: dict, shardings: dict) -> dict:
  """This host's numpy batch -> global jax arrays (each host contributes its rows/patches)."""
  return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch, shardings)


# ---- the run -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """Everything a training run is made of, before the first step (see `build`)."""

  cfg: Any
  mesh: Any
  rules: tuple
  model_config: Any
  plan: pipeline.BatchPlan
  builder: pipeline.BatchBuilder
  total_steps: int
  state: dict  # {"step", "params", "opt_state"}, on the mesh
  frozen: dict  # parameters that do not train, on the mesh
  state_sh: dict
  frozen_sh: dict
  step_fn: Callable  # train_step with the model and optimizer bound; not yet jitted
  dropped: list = dataclasses.field(default_factory=list)  # `dropped_records`

  def jit_step(self, host_batch: dict):
    """The jitted step for batches shaped like `host_batch` -> (step, batch shardings)."""
    batch_sh = step_lib.batch_shardings(self.mesh, self.rules, host_batch)
    replicated = NamedSharding(self.mesh, P())
    return jax.jit(
      self.step_fn,
      in_shardings=(self.state_sh, self.frozen_sh, batch_sh),
      out_shardings=(self.state_sh, replicated),
      donate_argnums=(0,),
    ), batch_sh


def build(cfg, workdir: str) -> Run:
  """Mesh, tokenizer, model, data plan, optimizer and the initial state, from the config."""
  parts = run_setup.run_parts(cfg, workdir, kind="sft", check=check_geometry)
  mesh, rules, tokenizer, model, settings = parts.mesh, parts.rules, parts.tokenizer, parts.model, parts.settings
  mc, source = model.config, parts.source
  if not len(source):
    raise ValueError(
      f"0 records in {cfg.data.paths or 'the synthetic data (data.synthetic_size)'}: nothing to train on"
    )
  sizes = record_sizes(cfg.data, source, tokenizer, settings, workdir)
  dropped = dropped_records(cfg, sizes, source)
  plan = make_plan(cfg, sizes, cfg.train.steps)
  total_steps = cfg.train.steps or len(plan)
  builder = pipeline.BatchBuilder(source, tokenizer, settings, plan.spec, mc, host=jax.process_index())
  log.info(
    "%d records (%d dropped), %d steps per epoch, training %d steps",
    len(sizes),
    plan.num_dropped,
    plan.steps_per_epoch,
    total_steps,
  )

  tx = optim_lib.make_optimizer(cfg.optim, total_steps)
  parts = scaffold.split_model(model, cfg, tx, mesh, rules)
  state = scaffold.init_state(nnx.to_pure_dict(parts.params), tx, parts.state_sh)
  options = step_lib.StepOptions(
    compute_dtype=run_setup.DTYPES[cfg.train.compute_dtype], loss_chunk=cfg.train.loss_chunk
  )
  step_fn = functools.partial(
    step_lib.train_step,
    graphdef=parts.graphdef,
    rest=parts.rest,
    tx=tx,
    lr_schedule=optim_lib.schedule(cfg.optim, total_steps),
    options=options,
  )
  return Run(
    cfg=cfg,
    mesh=mesh,
    rules=rules,
    model_config=mc,
    plan=plan,
    builder=builder,
    total_steps=total_steps,
    state=state,
    frozen=nnx.to_pure_dict(parts.frozen),
    state_sh=parts.state_sh,
    frozen_sh=parts.frozen_sh,
    step_fn=step_fn,
    dropped=dropped,
  )


def host_step_flops(run: Run, host_batch: dict, grids: np.ndarray) -> tuple[float, float]:
  """(model FLOPs, real tokens) of a step, all hosts together, from this host's batch."""
  hosts = jax.process_count()
  tokens = float((host_batch["attention_mask"] > 0).sum()) * hosts
  flops = metrics_lib.step_flops(
    run.model_config,
    tokens=tokens,
    seq_len=host_batch["input_ids"].shape[-1],
    patches=float(grids.prod(-1).sum()) * hosts,
    train_vision=not run.cfg.train.freeze_vision_tower,
  )
  return flops, tokens


# ---- the loop ---------------------------------------------------------------------------------------

StepHook = scaffold.StepHook


def train(cfg, workdir: str, *, hooks: Sequence[StepHook] = ()) -> scaffold.RunResult:
  """Runs (or resumes) training -> `scaffold.RunResult` (history: host-side records of this
  process's steps: step, loss, batch fingerprint; last: the step, loss and tokens/s of the last
  log; dropped: the records left out). `hooks` run after every step. On SIGTERM: a checkpoint,
  then `Preempted` (exit status 75, requeue)."""
  run = build(cfg, workdir)
  state, frozen, stopped = run.state, run.frozen, None
  with scaffold.Scaffold(cfg, workdir, unit="step", total=run.total_steps) as sc:
    resumed = sc.restore(state, frozen, run.state_sh, run.frozen_sh)
    data_state = None
    if resumed is not None:
      state, frozen, data_state = resumed.state, resumed.frozen, resumed.data_state
      sc.resumed_from()
    iterator = pipeline.make_iterator(
      run.plan, run.builder, workers=cfg.data.workers, buffer=cfg.data.prefetch_buffer, state=data_state
    )
    try:
      sc.open()
      dropped = _report_dropped(run, workdir, sc, sc.start)
      state, stopped = _steps(run, sc, iterator, state, frozen, hooks)
    finally:  # Stops Grain's worker processes and frees their shared memory (also on an error).
      iterator.close()
  if stopped is not None:
    raise stopped
  return sc.result(run, state, frozen, dropped)


def _steps(run: Run, sc: scaffold.Scaffold, iterator, state, frozen, hooks):
  """The steps from `sc.start` on -> (state, the `Preempted` to raise, or None)."""
  cfg, total_steps = run.cfg, run.total_steps
  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, cfg.train.peak_tflops) * run.mesh.size
  jitted = batch_sh = None
  pending = []
  t_last, flops_acc, tokens_acc = time.perf_counter(), 0.0, 0.0
  for step in range(sc.start, total_steps):
    host_batch = next(iterator)
    grids = host_batch.pop("image_grid_thw")
    if jitted is None:
      jitted, batch_sh = run.jit_step(host_batch)
    flops, tokens = host_step_flops(run, host_batch, grids)
    flops_acc, tokens_acc = flops_acc + flops, tokens_acc + tokens
    state, m = jitted(state, frozen, to_global(host_batch, batch_sh))
    pending.append((step + 1, m, zlib.crc32(host_batch["input_ids"].tobytes())))
    done = step + 1
    if done % cfg.train.log_every == 0 or done == total_steps:
      fetched = [(s, jax.device_get(mm), h) for s, mm, h in pending]
      elapsed = time.perf_counter() - t_last
      last = fetched[-1][1]
      tps = tokens_acc / elapsed if elapsed > 0 else 0.0
      sc.scalars(
        done,
        {
          "train/loss": last["loss"],
          "train/learning_rate": last["learning_rate"],
          "train/grad_norm": last["grad_norm"],
          "train/loss_tokens": last["loss_tokens"],
          "perf/tokens_per_s": tps,
          "perf/mfu": flops_acc / elapsed / peak if peak and elapsed > 0 else None,
        },
      )
      sc.progress(done, tps, loss=float(last["loss"]), lr=float(last["learning_rate"]))
      sc.append(
        [{"step": s, "loss": float(mm["loss"]), "batch_hash": h} for s, mm, h in fetched],
        last={"step": done, "loss": float(last["loss"]), "tokens_per_s": tps},
      )
      pending, t_last, flops_acc, tokens_acc = [], time.perf_counter(), 0.0, 0.0
    stopped = sc.end_step(done, state, frozen, iterator.get_state(), hooks)
    if stopped is not None:
      return state, stopped
  return state, None


def _report_dropped(run: Run, workdir: str, sc: scaffold.Scaffold, step: int) -> dict:
  """The records left out (`dropped_records`, allowed by data.drop_oversized or data.skip_bad):
  listed in `<workdir>/dropped_records.jsonl`, counted in TensorBoard (data/dropped_records) ->
  {"records", "of", "why", "path"} for the end-of-run summary."""
  path = layout.dropped_records(workdir)
  why = pipeline.drop_reasons(run.plan.sizes, run.plan.spec)
  if sc.is_primary and run.dropped:
    with open(path, "w", encoding="utf-8") as f:
      for d in run.dropped:
        f.write(json.dumps(d) + "\n")
  sc.scalars(step, {"data/dropped_records": float(len(run.dropped)), "data/records": float(len(run.plan.sizes))})
  return {"records": len(run.dropped), "of": len(run.plan.sizes), "why": why, "path": path if run.dropped else None}
