"""The SFT training loop: build everything from the config, resume if the workdir has a
checkpoint, run the jitted step, write summaries and checkpoints.

    state = train(config, workdir)

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
import os
import time
import zlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from codevision_jax import distributed_env, parallel
from codevision_jax.data import geometry, pipeline, size_cache
from codevision_jax.runtime import checkpointing, metrics as metrics_lib, optimizer as optim_lib
from codevision_jax.train import step as step_lib
from codevision_jax.runtime import preemption, remat, resume, run_setup

log = logging.getLogger(__name__)


# ---- building blocks ------------------------------------------------------------------------------

def make_spec(cfg) -> pipeline.BatchSpec:
  return pipeline.BatchSpec(buckets=tuple(cfg.data.buckets), batch_size=cfg.data.batch_size,
                            patch_budget=cfg.data.patch_budget, grad_accum=cfg.train.grad_accum,
                            max_images=cfg.data.max_images, num_hosts=jax.process_count(),
                            sort_window=cfg.data.sort_window, num_groups=cfg.data.groups,
                            packing=cfg.data.packing)


def record_origin(source, index: int) -> str:
  """Record `index`'s name in messages: "file:index" (or the TFDS set and index)."""
  origins = source.origins() if hasattr(source, "origins") else None
  return (origins[index] if origins else getattr(source[index], "origin", "")) or f"record {index}"


def dropped_records(cfg, sizes, source) -> list[dict]:
  """The records no batch can hold, each with its sizes and why: refused (ValueError naming them
  and the setting that fits them) unless `data.drop_oversized`; records skipped as bad
  (`data.skip_bad`) are counted too."""
  spec = make_spec(cfg)
  if not cfg.data.get("drop_oversized", False):
    pipeline.refuse_oversized(sizes, spec, lambda i: record_origin(source, i))
  why = dict(pipeline.oversized(sizes, spec))
  out = []
  for i in np.flatnonzero(~spec.fits(sizes)):
    n, p, k = (int(x) for x in sizes[i])
    out.append({"record": record_origin(source, int(i)), "tokens": n, "patches": p, "images": k,
                "why": why.get(int(i), "an image that cannot be used (data.skip_bad)")})
  return out


def make_plan(cfg, sizes, total_steps_hint: int = 0) -> pipeline.BatchPlan:
  spec = make_spec(cfg)
  plan = pipeline.BatchPlan(sizes, spec, seed=cfg.data.seed, num_epochs=cfg.data.num_epochs)
  if total_steps_hint > len(plan):  # More steps than epochs: plan enough further epochs.
    epochs = cfg.data.num_epochs * math.ceil(total_steps_hint / len(plan)) + 1
    plan = pipeline.BatchPlan(sizes, spec, seed=cfg.data.seed, num_epochs=epochs)
  return plan


def record_sizes(data_cfg, source, tokenizer, settings, workdir: str):
  """Every record's tokens, patches and images (`size_cache.record_sizes`): read from the size
  cache (`data.size_cache`) or sized in `data.workers` processes; process 0 writes the cache."""
  return size_cache.record_sizes(
      source, tokenizer, settings, cache_dir=size_cache.cache_dir(data_cfg, workdir),
      skip_bad=data_cfg.skip_bad, workers=data_cfg.get("workers", 0),
      process_index=jax.process_index(),
      barrier=functools.partial(distributed_env.barrier, "size_cache"))


def check_geometry(cfg, mesh):
  """Batch rows and patches are split over the batch mesh axes: sizes must divide evenly."""
  geometry.check_divisible(cfg.data.batch_size, cfg.data.patch_budget,
                           mesh.shape["data"] * mesh.shape["fsdp"], rows_key="data.batch_size",
                           budget_key="data.patch_budget")


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
  state: dict   # {"step", "params", "opt_state"}, on the mesh
  frozen: dict  # parameters that do not train, on the mesh
  state_sh: dict
  frozen_sh: dict
  step_fn: Callable  # train_step with the model and optimizer bound; not yet jitted
  dropped: list = dataclasses.field(default_factory=list)  # `dropped_records`

  def jit_step(self, host_batch: dict):
    """The jitted step for batches shaped like `host_batch` -> (step, batch shardings)."""
    batch_sh = step_lib.batch_shardings(self.mesh, self.rules, host_batch)
    replicated = NamedSharding(self.mesh, P())
    return jax.jit(self.step_fn, in_shardings=(self.state_sh, self.frozen_sh, batch_sh),
                   out_shardings=(self.state_sh, replicated), donate_argnums=(0,)), batch_sh


def build(cfg, workdir: str) -> Run:
  """Mesh, tokenizer, model, data plan, optimizer and the initial state, from the config."""
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh)
  check_geometry(cfg, mesh)
  tokenizer, model, settings = run_setup.model_parts(cfg, workdir, mesh, rules)
  mc = model.config
  source = run_setup.conversation_source(cfg.data, kind="sft")
  if not len(source):
    raise ValueError(f"0 records in {cfg.data.paths or 'the synthetic data (data.synthetic_size)'}: "
                     "nothing to train on")
  sizes = record_sizes(cfg.data, source, tokenizer, settings, workdir)
  dropped = dropped_records(cfg, sizes, source)
  plan = make_plan(cfg, sizes, cfg.train.steps)
  total_steps = cfg.train.steps or len(plan)
  builder = pipeline.BatchBuilder(source, tokenizer, settings, plan.spec, mc, host=jax.process_index())
  log.info("%d records (%d dropped), %d steps per epoch, training %d steps", len(sizes),
           plan.num_dropped, plan.steps_per_epoch, total_steps)

  remat.apply_remat(model, cfg.train.remat)
  graphdef, params, frozen, rest = nnx.split(
      model, optim_lib.trainable_filter(cfg.train.freeze_vision_tower, cfg.train.freeze_merger),
      nnx.Param, ...)
  tx = optim_lib.make_optimizer(cfg.optim, total_steps)
  abstract_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(params))
  state_sh = step_lib.state_shardings(params, abstract_opt, mesh, rules)
  frozen_sh = nnx.to_pure_dict(parallel.state_shardings(frozen, mesh, rules))
  params, frozen = nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params)}
  state = jax.device_put(state, state_sh)
  options = step_lib.StepOptions(compute_dtype=run_setup.DTYPES[cfg.train.compute_dtype],
                                 loss_chunk=cfg.train.loss_chunk)
  step_fn = functools.partial(step_lib.train_step, graphdef=graphdef, rest=rest, tx=tx,
                              lr_schedule=optim_lib.schedule(cfg.optim, total_steps), options=options)
  return Run(cfg, mesh, rules, mc, plan, builder, total_steps, state, frozen, state_sh, frozen_sh,
             step_fn, dropped)


def host_step_flops(run: Run, host_batch: dict, grids: np.ndarray) -> tuple[float, float]:
  """(model FLOPs, real tokens) of a step, all hosts together, from this host's batch."""
  hosts = jax.process_count()
  tokens = float((host_batch["attention_mask"] > 0).sum()) * hosts
  flops = metrics_lib.step_flops(
      run.model_config, tokens=tokens, seq_len=host_batch["input_ids"].shape[-1],
      patches=float(grids.prod(-1).sum()) * hosts, train_vision=not run.cfg.train.freeze_vision_tower)
  return flops, tokens


# ---- the loop ---------------------------------------------------------------------------------------

StepHook = Callable[[int, checkpointing.Checkpointer], None]
"""Called after every step, once the step's checkpoint (if one is due) has been started, with the
step number and the run's checkpointer (`wait()` returns when its saves are on disk)."""


def train(cfg, workdir: str, *, hooks: Sequence[StepHook] = ()) -> dict:
  """Runs (or resumes) training; returns {"state", "frozen", "history", "last"} (history: per-step
  host-side records of this process's steps: step, loss, batch fingerprint; last: the step, loss
  and tokens/s of the last log). `hooks` run after every step."""
  run = build(cfg, workdir)
  mesh, plan, builder, total_steps = run.mesh, run.plan, run.builder, run.total_steps
  state, frozen, state_sh, frozen_sh = run.state, run.frozen, run.state_sh, run.frozen_sh
  ckpt = checkpointing.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                    every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints,
                                    async_save=cfg.train.async_checkpoints)
  data_state, latest = None, None
  restored = ckpt.restore_resumable(checkpointing.abstract_like(state, state_sh),
                                    checkpointing.abstract_like(frozen, frozen_sh),
                                    step=cfg.train.resume_step or None)
  if restored is not None:
    latest, state, frozen, data_state, saved_config = restored
    resume.check(saved_config, cfg, step=latest)
    log.info("resumed from %s at step %d", ckpt.directory, latest)
  start = int(state["step"])
  if start >= total_steps and latest is not None:
    log.warning("the checkpoint is at step %d and the run has %d steps: nothing to train (raise "
                "--config.train.steps to train further)", start, total_steps)
  iterator = pipeline.make_iterator(plan, builder, workers=cfg.data.workers,
                                    buffer=cfg.data.prefetch_buffer, state=data_state)

  jitted = batch_sh = None

  is_primary = jax.process_index() == 0
  writer = metrics_lib.SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=is_primary)
  dropped = _report_dropped(run, workdir, writer, start, is_primary)
  bar = metrics_lib.ProgressBar(total_steps, start=start, every=cfg.train.log_every)
  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, cfg.train.peak_tflops) * mesh.size
  config_json = cfg.to_dict()
  history, pending, last_logged = [], [], {}
  t_last, flops_acc, tokens_acc = time.perf_counter(), 0.0, 0.0
  saved_at = latest
  # SIGTERM (a preemption): the step in flight finishes, a checkpoint is saved, `Preempted` exits
  # with the requeue status (train/preemption.py; train.sigterm_grace_s abandons a step that takes
  # too long).
  preempt = preemption.Preemption(cfg.train.get("sigterm_grace_s", 0.0), unit="step").__enter__()
  try:
    for step in range(start, total_steps):
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
        for s, mm, h in fetched:
          history.append({"step": s, "loss": float(mm["loss"]), "batch_hash": h})
        last = fetched[-1][1]
        tps = tokens_acc / elapsed if elapsed > 0 else 0.0
        scalars = {"train/loss": last["loss"], "train/learning_rate": last["learning_rate"],
                   "train/grad_norm": last["grad_norm"], "train/loss_tokens": last["loss_tokens"],
                   "perf/tokens_per_s": tps,
                   "perf/mfu": flops_acc / elapsed / peak if peak and elapsed > 0 else None}
        writer.scalars(done, scalars)
        bar.update(done, tps, loss=float(last["loss"]), lr=float(last["learning_rate"]))
        last_logged = {"step": done, "loss": float(last["loss"]), "tokens_per_s": tps}
        pending, t_last, flops_acc, tokens_acc = [], time.perf_counter(), 0.0, 0.0
      if ckpt.save(done, state, frozen, iterator.get_state(), config_json):
        saved_at = done
      for hook in hooks:
        hook(done, ckpt)
      if preempt.should_stop(done) and done < total_steps:  # Every process, every step.
        if saved_at != done:
          ckpt.save(done, state, frozen, iterator.get_state(), config_json, force=True)
        stopped = preempt.exit(done)
        log.warning("%s", stopped)
        raise stopped
    if saved_at != total_steps and total_steps > start:
      ckpt.save(total_steps, state, frozen, iterator.get_state(), config_json, force=True)
  finally:  # Also when a step fails: pending checkpoint saves finish before the error surfaces.
    bar.close()
    iterator.close()  # Stops Grain's worker processes and frees their shared memory.
    ckpt.close()
    writer.close()
    preempt.__exit__(None, None, None)
  return {"state": state, "frozen": frozen, "history": history, "last": last_logged,
          "dropped": dropped}


def _report_dropped(run: Run, workdir: str, writer, step: int, is_primary: bool) -> dict:
  """The records left out (`dropped_records`, allowed by data.drop_oversized or data.skip_bad):
  listed in `<workdir>/dropped_records.jsonl`, counted in TensorBoard (data/dropped_records) ->
  {"records", "of", "why", "path"} for the end-of-run summary."""
  path = os.path.join(workdir, "dropped_records.jsonl")
  why = pipeline.drop_reasons(run.plan.sizes, run.plan.spec)
  if is_primary and run.dropped:
    with open(path, "w", encoding="utf-8") as f:
      for d in run.dropped:
        f.write(json.dumps(d) + "\n")
  writer.scalars(step, {"data/dropped_records": float(len(run.dropped)),
                        "data/records": float(len(run.plan.sizes))})
  return {"records": len(run.dropped), "of": len(run.plan.sizes), "why": why,
          "path": path if run.dropped else None}
