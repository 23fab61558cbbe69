"""SIGTERM: finish the step in flight, save a checkpoint, stop, and exit for a requeue.

SIGTERM is how Slurm (preemption, `scancel`, the time limit), Kubernetes (pod eviction, node
drain) and preemptible / spot TPU and GPU VMs stop a job. The SFT and RL loops run inside
`Preemption(grace_s)`:

    with preemption.Preemption(cfg.train.sigterm_grace_s) as preempt:
      for step in ...:
        ... one step ...
        if preempt.should_stop(step + 1):  # every process, every step
          save a checkpoint at step + 1; raise preempt.exit(step + 1)

* One process: the SIGTERM handler sets a flag; the loop sees it after the step (or round) in
  flight and stops there.
* Several processes (`jax.distributed`): they must stop at the same step to write one checkpoint.
  JAX's preemption sync manager does this (`multihost_utils.reached_preemption_sync_point`): the
  notice of any process reaches all through the coordination service, which picks the step after
  the furthest one any process has reached; every process's `should_stop` is True at that step.
  JAX listens for SIGTERM with its own C handler; ours runs first and calls it.
* `grace_s` (`train.sigterm_grace_s`): when the step or round in flight has not finished that many
  seconds after the signal, it is abandoned: the process exits at once with `REQUEUE_EXIT_CODE`
  and the rerun resumes from the last checkpoint written before (resumption from any checkpoint is
  exact, so only time is lost). 0 waits for the step however long it takes. Set it below the
  scheduler's own kill deadline minus the time a checkpoint takes to write (Slurm: `GraceTime` of
  the partition's preemption, or `KillWait`, 30 s by default; Kubernetes:
  `terminationGracePeriodSeconds`, 30 s by default; GCE spot/preemptible VMs: 30 s).

The run then stops its services (the local executor, Grain's workers, the checkpointer) and
raises `Preempted`, a `SystemExit` with `REQUEUE_EXIT_CODE` (75, EX_TEMPFAIL of sysexits.h:
"temporary failure, retry"), so every launcher exits with it. How schedulers take it: docs in
README "Preemption". A second SIGTERM while stopping is ignored (the save is under way); SIGKILL
still ends the process, and the last finished checkpoint is used.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

import jax

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: the run saved its state and asks to be run again.


class Preempted(SystemExit):
  """The run stopped on SIGTERM after saving a checkpoint; exits with `REQUEUE_EXIT_CODE`."""

  def __init__(self, step: int, unit: str = "step"):
    super().__init__(REQUEUE_EXIT_CODE)
    self.step = step
    self.unit = unit

  def __str__(self) -> str:
    return (
      f"preempted (SIGTERM): stopped after {self.unit} {self.step} with a checkpoint; exit "
      f"status {REQUEUE_EXIT_CODE} asks the scheduler to requeue (rerun the same command to "
      "resume)"
    )


_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)


def _c_handler(signum: int):
  """The C-level handler of `signum` that is not Python's (JAX's preemption notifier installs
  one for SIGTERM in `jax.distributed.initialize`), as a callable, or None."""
  if callable(signal.getsignal(signum)):  # Python's own handler: nothing foreign to chain.
    return None
  libc = ctypes.CDLL(None)
  libc.signal.restype = ctypes.c_void_p
  libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
  old = libc.signal(signum, None)  # SIG_DFL for an instant, to read the pointer back.
  libc.signal(signum, old)
  if old in (None, 0, 1) or old == ctypes.c_void_p(-1).value:  # SIG_DFL, SIG_IGN, SIG_ERR.
    return None
  return _HANDLER_TYPE(old)


class Preemption:
  """Watches for SIGTERM while a training loop runs (see the module docstring)."""

  def __init__(self, grace_s: float = 0.0, unit: str = "step"):
    self.grace_s = float(grace_s or 0.0)
    self.unit = unit
    self.signalled_at: float | None = None
    self._previous = None
    self._chained = None
    self._installed = False
    self._watchdog: threading.Timer | None = None
    self._stopping = False

  @property
  def multi_process(self) -> bool:
    return jax.process_count() > 1

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is not threading.main_thread():
      log.info(
        "not on the main thread: SIGTERM is not watched (preemption-safe stops need the "
        "training loop on the main thread)"
      )
      return self
    self._chained = _c_handler(signal.SIGTERM) if self.multi_process else None
    self._previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, self._on_sigterm)
    self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    self._cancel_watchdog()
    if self._installed:
      if self._chained is not None:  # Give JAX its handler back.
        libc = ctypes.CDLL(None)
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.signal(signal.SIGTERM, ctypes.cast(self._chained, ctypes.c_void_p))
      else:
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
      self._installed = False

  def _on_sigterm(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self._chained is not None:
      self._chained(signum)  # JAX's notifier: the coordination service tells every process.
    if self.signalled_at is not None or self._stopping:
      log.warning("SIGTERM again: already stopping")
      return
    self.signalled_at = time.monotonic()
    log.warning(
      "SIGTERM: finishing the %s in flight, then saving a checkpoint and exiting with status %d (requeue)%s",
      self.unit,
      REQUEUE_EXIT_CODE,
      f"; abandoning it if it takes over {self.grace_s:g} s (train.sigterm_grace_s)" if self.grace_s else "",
    )
    if self.grace_s:
      self._watchdog = threading.Timer(self.grace_s, self._abandon)
      self._watchdog.daemon = True
      self._watchdog.start()

  def _abandon(self) -> None:
    log.error(
      "the %s in flight did not finish within train.sigterm_grace_s = %g s of SIGTERM: "
      "abandoned; exiting with status %d (requeue) without a new checkpoint, the rerun "
      "resumes from the last one",
      self.unit,
      self.grace_s,
      REQUEUE_EXIT_CODE,
    )
    for handler in logging.getLogger().handlers:
      try:
        handler.flush()
      except Exception:  # noqa: BLE001 - exiting anyway.
        pass
    os._exit(REQUEUE_EXIT_CODE)  # pylint: disable=protected-access

  def _cancel_watchdog(self) -> None:
    if self._watchdog is not None:
      self._watchdog.cancel()
      self._watchdog = None

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step` (every process calls this after every step, with increasing
    steps, and gets the same answer). True stops the grace watchdog: the save is next."""
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self.signalled_at is not None
    if stop:
      self._stopping = True
      self._cancel_watchdog()
      log.warning("stopping after %s %d for the preemption: saving a checkpoint", self.unit, step)
    return stop

  def exit(self, step: int) -> Preempted:
    """The exception that ends the run once its checkpoint is saved."""
    return Preempted(step, self.unit)
