"""Preemption (codevision_jax/runtime/preemption.py): a real SIGTERM to a training process finishes
the step in flight, saves a checkpoint there and exits with the requeue status; the rerun resumes
and equals the straight run. A step that outlasts train.sigterm_grace_s is abandoned: the process
exits with the requeue status at once, keeping the checkpoints written before. (RL: the same in
tests/test_rl_loop.py.)"""

import os
import subprocess
import sys

import jax
import numpy as np

from codevision_jax.train import loop
from codevision_jax.runtime import preemption
from test_train_resume import ROOT, assert_resumed_equals_straight, config as resume_config

TESTS = os.path.dirname(os.path.abspath(__file__))


def config():
  c = resume_config()  # 6 steps, checkpoints every 3, FSDP over 2 devices.
  c.data.buckets = (768,)  # Every synthetic record fits (the longest has 697 tokens).
  return c


# A preempted job: SIGTERM arrives while step `at` is the last one done (its hooks run); with
# `block`, the step then never finishes (the hook waits forever).
SIGTERMED = f"""
import os, signal, sys, threading
sys.path.insert(0, {TESTS!r})
from test_preemption import config
from codevision_jax.train import loop

at, block, grace = int(sys.argv[2]), sys.argv[3] == "block", float(sys.argv[4])
c = config()
c.train.sigterm_grace_s = grace

def sigterm(step, checkpointer):
  if step == at:
    checkpointer.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    if block:
      threading.Event().wait()

loop.train(c, sys.argv[1], hooks=[sigterm])
"""


def preempted_run(workdir: str, at: int, *, block: bool = False, grace: float = 0.0):
  return subprocess.run(
    [sys.executable, "-c", SIGTERMED, workdir, str(at), "block" if block else "go", str(grace)],
    cwd=ROOT,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_sigterm_saves_exits_for_requeue_and_the_rerun_equals_the_straight_run(tmp_path):
  straight = loop.train(config(), str(tmp_path / "straight"))  # 6 steps, checkpoints every 3.

  workdir = str(tmp_path / "preempted")
  proc = preempted_run(workdir, at=2)
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE == 75, proc.stderr[-3000:]
  assert "preempted (SIGTERM): stopped after step 2 with a checkpoint" in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]  # Not due: forced.

  resumed = loop.train(config(), workdir)
  assert [h["step"] for h in resumed.history] == [3, 4, 5, 6]
  assert_resumed_equals_straight(resumed, straight, done=2)


def test_a_step_outlasting_the_grace_period_is_abandoned_keeping_the_last_checkpoint(tmp_path):
  workdir = str(tmp_path / "stuck")
  proc = preempted_run(workdir, at=4, block=True, grace=1.0)
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE, proc.stderr[-3000:]
  assert "did not finish within train.sigterm_grace_s = 1 s" in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  resumed = loop.train(config(), workdir)
  assert [h["step"] for h in resumed.history] == [4, 5, 6]


def rl_config():
  """Two short GRPO rounds from the tiny random model, a checkpoint due only at the end."""
  from configs import tiny_rl

  c = tiny_rl.get_config()
  c.rollout.prompts, c.rollout.group_size, c.algo.mini_batch_prompts = 4, 2, 2
  c.eval.every, c.train.save_rollouts = 0, 0
  c.train.rounds, c.train.checkpoint_every = 2, 2
  return c


RL_SIGTERMED = f"""
import os, signal, sys
sys.path.insert(0, {TESTS!r})
from test_preemption import rl_config
from codevision_jax.rl import loop

def sigterm_after_round_1(done, checkpointer):
  if done == 1:
    os.kill(os.getpid(), signal.SIGTERM)

loop.train(rl_config(), sys.argv[1], executor_urls=[sys.argv[2]], hooks=[sigterm_after_round_1])
"""


def test_rl_sigterm_finishes_the_round_saves_and_the_rerun_equals_the_straight_run(tmp_path):
  from codevision_jax.rl import loop as rl_loop
  from executor.local import local_service

  with local_service(workers=1) as service:
    straight = rl_loop.train(rl_config(), str(tmp_path / "straight"), executor_urls=[service.url])
    workdir = str(tmp_path / "preempted")
    proc = subprocess.run(
      [sys.executable, "-c", RL_SIGTERMED, workdir, service.url],
      cwd=ROOT,
      env=dict(os.environ),
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == preemption.REQUEUE_EXIT_CODE, proc.stderr[-3000:]
    assert "preempted (SIGTERM): stopped after round 1 with a checkpoint" in proc.stderr
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
    resumed = rl_loop.train(rl_config(), workdir, executor_urls=[service.url])
  assert [h["round"] for h in resumed.history] == [2]
  a, b = straight.history[-1], resumed.history[0]
  for key in a:
    if not key.startswith("time/") and key != "rollout/sampler_idle_fraction":
      assert a[key] == b[key], key  # The same prompts, samples, rewards and losses.
  sa, sb = jax.device_get(straight.state), jax.device_get(resumed.state)
  jax.tree.map(np.testing.assert_array_equal, sa["params"], sb["params"])
  jax.tree.map(np.testing.assert_array_equal, sa["opt_state"], sb["opt_state"])
