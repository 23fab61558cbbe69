"""One run scaffold for SFT (`train.loop`) and RL (`rl.loop`): what a training loop is made of
besides its own step.

    parts = scaffold.split_model(model, cfg, tx, mesh, rules)     # remat, trainable / frozen
    state = scaffold.init_state(params, tx, parts.state_sh)        # {"step", "params", "opt_state"}
    with scaffold.Scaffold(cfg, workdir, unit="step", total=n) as sc:
      resumed = sc.restore(state, frozen, parts.state_sh, parts.frozen_sh)   # None: a fresh run
      sc.open()                                     # TensorBoard, progress bar, SIGTERM handling
      for step in range(sc.start, n):
        ... the loop's own work ...
        sc.scalars(step + 1, {...}); sc.append([{...}], last={...}); sc.progress(step + 1, ...)
        stopped = sc.end_step(step + 1, state, frozen, data_state, hooks)   # save, hooks, SIGTERM
        if stopped: break
    if stopped: raise stopped
    return sc.result(run, state, frozen)           # RunResult, the same fields for SFT and RL

Checkpoints are due every `train.checkpoint_every` steps (rounds) and at the last one; on SIGTERM
the step in flight finishes, a checkpoint is saved and `end_step` returns the `Preempted` to raise
once everything is closed (runtime.preemption). The workdir's paths are `runtime.layout`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from codevision_jax import parallel
from codevision_jax.runtime import checkpointing, layout, metrics, preemption, remat, resume
from codevision_jax.runtime import optimizer as optim_lib
from codevision_jax.train import step as step_lib

log = logging.getLogger(__name__)

StepHook = Callable[[int, checkpointing.Checkpointer], None]
"""Called after every step (round), once its checkpoint (if one is due) has been started, with the
step number and the run's checkpointer (`wait()` returns when its saves are on disk)."""

STEPS_KEYS = {"step": "train.steps", "round": "train.rounds"}
"""The config field that sets how many of each unit a run has."""


# ---- the state ------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitModel:
  """A model taken apart for training (`split_model`), and where its train state lives."""

  graphdef: Any
  params: nnx.State  # the trainable parameters (`optimizer.trainable_of`)
  frozen: nnx.State  # the parameters that do not train
  rest: nnx.State  # everything that is not a parameter
  state_sh: dict  # shardings of {"step", "params", "opt_state"}
  frozen_sh: dict  # shardings of the frozen parameters


def split_model(model: nnx.Module, cfg, tx, mesh, rules) -> SplitModel:
  """`model` with `train.remat` applied, split into trainable and frozen parameters (the one
  function of the config `optimizer.trainable_of`) and the rest, with the shardings of the train
  state (optimizer `tx`'s moments follow their parameters) and of the frozen parameters."""
  remat.apply_remat(model, cfg.train.remat)
  graphdef, params, frozen, rest = nnx.split(model, optim_lib.trainable_of(cfg), nnx.Param, ...)
  abstract_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(params))
  state_sh = step_lib.state_shardings(params, abstract_opt, mesh, rules)
  frozen_sh = nnx.to_pure_dict(parallel.state_shardings(frozen, mesh, rules))
  return SplitModel(graphdef=graphdef, params=params, frozen=frozen, rest=rest, state_sh=state_sh, frozen_sh=frozen_sh)


def init_state(params: dict, tx, state_sh: dict) -> dict:
  """The train state at step 0, {"step", "params", "opt_state"}, on the mesh (`state_sh`)."""
  state = {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "opt_state": jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params),
  }
  return jax.device_put(state, {k: state_sh[k] for k in state})


def checkpointer(cfg, workdir: str, *, every: int | None = None) -> checkpointing.Checkpointer:
  """The run's checkpointer on `<workdir>/checkpoints` (`train.checkpoint_every`,
  `train.keep_checkpoints`, `train.async_checkpoints`)."""
  return checkpointing.Checkpointer(
    os.path.abspath(layout.checkpoints(workdir)),
    every=cfg.train.checkpoint_every if every is None else every,
    keep=cfg.train.keep_checkpoints,
    async_save=cfg.train.async_checkpoints,
  )


def latest_step(workdir: str) -> int | None:
  """The newest finished checkpoint's step in `<workdir>/checkpoints`, or None."""
  ckpt = checkpointing.Checkpointer(os.path.abspath(layout.checkpoints(workdir)), every=0, keep=1, async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


# ---- the result -----------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
  """What `train.loop.train` and `rl.loop.train` return: the same fields for both."""

  run: Any  # what the run was built into: `train.loop.Run`, `rl.loop.RLRun`
  state: dict  # the train state at the end, on the mesh ({"step", "params", "opt_state", ...})
  frozen: dict  # the parameters that did not train, on the mesh
  history: list  # this process's records: per SFT step {"step", "loss", "batch_hash"}; per RL
  #                round its metrics with "round" (and round 0: an evaluation before training)
  last: dict  # the last logged figures: SFT {"step", "loss", "tokens_per_s"}; RL the last line
  steps: int  # the steps (SFT) or rounds (RL) of the whole run
  dropped: dict | None = None  # SFT: the records left out {"records", "of", "why", "path"};
  #                              RL: None (trajectories left out are counted per round, batch/*)


@dataclasses.dataclass
class Resumed:
  """Where a resumed run continues: the checkpoint's step, state, frozen parameters and data
  iterator state."""

  step: int
  state: dict
  frozen: dict
  data_state: dict


# ---- the loop's services ----------------------------------------------------------------------------


class Scaffold:
  """The services of one training loop, opened together and closed together (also when a step
  fails: checkpoint saves under way finish before the error surfaces): the checkpointer with its
  restore and resume checks, TensorBoard (`<workdir>/tensorboard`), `metrics.jsonl` (when
  `jsonl`), the progress bar, SIGTERM handling, and this process's history for the result.

  `unit` is "step" (SFT) or "round" (RL); `total` how many the run has. Process 0 writes the logs;
  every process saves checkpoints."""

  def __init__(self, cfg, workdir: str, *, unit: str, total: int, jsonl: bool = False):
    if unit not in STEPS_KEYS:
      raise ValueError(f"unit {unit!r} is not one of {sorted(STEPS_KEYS)}")
    self.cfg, self.workdir, self.unit, self.total, self.jsonl = cfg, workdir, unit, total, jsonl
    self.is_primary = jax.process_index() == 0
    self.ckpt = checkpointer(cfg, workdir)
    self.config_json = cfg.to_dict()
    self.start = 0
    self.history: list[dict] = []
    self.last: dict = {}
    self.writer = self.metrics = self.bar = self.preempt = None

  def __enter__(self) -> "Scaffold":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def restore(self, state, frozen, state_sh, frozen_sh) -> Resumed | None:
    """The checkpoint to continue from (`train.resume_step`, else the newest intact one), its
    config checked against this run's (`resume.check`); None when the workdir has none."""
    restored = self.ckpt.restore_resumable(
      checkpointing.abstract_like(state, state_sh),
      checkpointing.abstract_like(frozen, frozen_sh),
      step=self.cfg.train.resume_step or None,
    )
    if restored is None:
      return None
    step, state, frozen, data_state, saved_config = restored
    key = STEPS_KEYS[self.unit]
    resume.check(saved_config, self.cfg, step=step, steps_key=key)
    self.start = int(step)
    if self.start >= self.total:
      log.warning(
        "the checkpoint is at %s %d and the run has %d %ss: nothing to train (raise --config.%s to train further)",
        self.unit,
        self.start,
        self.total,
        self.unit,
        key,
      )
    return Resumed(step=self.start, state=state, frozen=frozen, data_state=data_state)

  def resumed_from(self) -> None:
    """Logs where the run resumed (after the loop has taken the restored state in)."""
    log.info("resumed from %s at %s %d", self.ckpt.directory, self.unit, self.start)

  def open(self) -> None:
    """TensorBoard, metrics.jsonl, the progress bar and SIGTERM handling, from `self.start`."""
    self.writer = metrics.SummaryWriter(layout.tensorboard(self.workdir), enabled=self.is_primary)
    self.metrics = metrics.JsonlWriter(layout.metrics(self.workdir), enabled=self.is_primary and self.jsonl)
    self.bar = metrics.ProgressBar(self.total, start=self.start, every=self.cfg.train.log_every)
    # SIGTERM (a preemption): the step in flight finishes, a checkpoint is saved, `Preempted`
    # exits with the requeue status; train.sigterm_grace_s abandons a step that takes too long.
    self.preempt = preemption.Preemption(self.cfg.train.get("sigterm_grace_s", 0.0), unit=self.unit).__enter__()

  def scalars(self, step: int, values: dict) -> None:
    """TensorBoard scalars of `step` (None and non-finite values are left out)."""
    self.writer.scalars(step, values)

  def append(self, lines: Sequence[dict], last: dict) -> None:
    """Records of this process's history (each also a line of metrics.jsonl with `jsonl`), and
    the last logged figures (the result's `last`)."""
    for line in lines:
      self.history.append(line)
      self.metrics.write(line)
    self.last = last

  def progress(self, step: int, tokens_per_s: float, **values) -> None:
    self.bar.update(step, tokens_per_s, **values)

  def end_step(
    self, done: int, state, frozen, data_state: dict, hooks: Sequence[StepHook] = ()
  ) -> preemption.Preempted | None:
    """After step (round) `done`: its checkpoint when due (`train.checkpoint_every`, the last),
    the hooks, then the SIGTERM check of every process. Returns the `Preempted` to raise once
    the loop has closed its services, after saving `done` if it was not saved; else None."""
    self.ckpt.save(done, state, frozen, data_state, self.config_json, force=done == self.total)
    for hook in hooks:
      hook(done, self.ckpt)
    if not (self.preempt.should_stop(done) and done < self.total):
      return None
    if self.ckpt.saved_step != done:
      self.ckpt.save(done, state, frozen, data_state, self.config_json, force=True)
    stopped = self.preempt.exit(done)
    log.warning("%s", stopped)
    return stopped

  def close(self) -> None:
    """Closes what is open: the progress bar, the checkpointer (its saves finish first),
    TensorBoard, SIGTERM handling."""
    try:
      if self.bar is not None:
        self.bar.close()
      self.ckpt.close()
      if self.writer is not None:
        self.writer.close()
    finally:
      if self.preempt is not None:
        self.preempt.__exit__(None, None, None)
        self.preempt = None

  def result(self, run, state, frozen, dropped: dict | None = None) -> RunResult:
    return RunResult(
      run=run, state=state, frozen=frozen, history=self.history, last=self.last, steps=self.total, dropped=dropped
    )
