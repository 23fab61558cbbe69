"""Resumption: 6 steps straight equal 3 steps, the process SIGKILLed, then 3 more after a restart
(parameters and optimizer state bitwise equal on CPU, the same batches in the same order)."""

import os
import subprocess
import sys

import jax
import numpy as np

from configs import tiny_sft
from codevision_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {  # The tiny recipe at test size.
  "data.synthetic_size": 48,
  "data.buckets": (512,),
  "data.drop_oversized": True,
  "data.batch_size": 4,
  "data.patch_budget": 64,
  "data.max_pixels": 28 * 28 * 4,
  "train.log_every": 1,
  "train.steps": 6,
  "train.checkpoint_every": 3,
  "mesh.num_devices": 2,
  "mesh.shape.data": 1,
  "mesh.shape.fsdp": 2,
  "mesh.shape.tensor": 1,  # Sharded (FSDP) state, restored onto the mesh.
}


def config():
  c = tiny_sft.get_config()
  for key, value in OVERRIDES.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


# The run as a preempted job: SIGKILLed, without any cleanup, once step 3's checkpoint is on disk.
def killed_after_step_3(module: str = "test_train_resume", config_fn: str = "config") -> str:
  """A script that trains `module.config_fn()` into argv[1] and SIGKILLs itself once step 3's
  checkpoint is on disk."""
  return f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from {module} import {config_fn}
from codevision_jax.train import loop

def kill_after_step_3(step, checkpointer):
  if step == 3:
    checkpointer.wait()
    os.kill(os.getpid(), signal.SIGKILL)

loop.train({config_fn}(), sys.argv[1], hooks=[kill_after_step_3])
"""


KILLED_AFTER_STEP_3 = killed_after_step_3()


def test_kill_and_resume_equals_straight_run(tmp_path):
  straight = loop.train(config(), str(tmp_path / "straight"))

  workdir = str(tmp_path / "resumed")
  proc = subprocess.run(
    [sys.executable, "-c", KILLED_AFTER_STEP_3, workdir],
    cwd=ROOT,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == -9, proc.stderr[-3000:]  # Killed, not finished.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]

  resumed = loop.train(config(), workdir)
  assert [h["step"] for h in resumed.history] == [4, 5, 6]
  assert_resumed_equals_straight(resumed, straight, done=3)


def assert_resumed_equals_straight(resumed: dict, straight: dict, *, done: int) -> None:
  """The resumed run's steps after `done` are the straight run's, batch for batch and loss for
  loss, and both end (at step 6) with identical parameters and optimizer state."""
  tail = straight.history[done:]
  assert [h["batch_hash"] for h in resumed.history] == [h["batch_hash"] for h in tail]
  assert [h["loss"] for h in resumed.history] == [h["loss"] for h in tail]
  a, b = jax.device_get(straight.state), jax.device_get(resumed.state)
  assert int(a["step"]) == int(b["step"]) == 6
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
