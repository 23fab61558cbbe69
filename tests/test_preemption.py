"""Preemption (codevision_jax/runtime/preemption.py): a real SIGTERM to a training process finishes
the step in flight, saves a checkpoint there and exits with the requeue status; the rerun resumes
and equals the straight run. A step that outlasts train.sigterm_grace_s is abandoned: the process
exits with the requeue status at once, keeping the checkpoints written before. (RL: tests/test_rl_loop.py.)"""

import os
import subprocess
import sys


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
