"""GRPO end to end on CPU: the tiny model after a short SFT learns from the reward (held-out
reward up, tool calls up), a killed and resumed run equals an uninterrupted one, and faults
(the executor killed mid-round, a judge refusing connections, records without ground truth)
end in clear outcomes; a SIGTERMed run saves the round it finishes and its rerun equals an
uninterrupted one."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.numpy

from codevision_jax.data.records import png_bytes
from codevision_jax.rl import loop
from codevision_jax.sampling import engine
from codevision_jax.sampling import trajectory as traj_lib
from codevision_jax.runtime import export, preemption
from configs import tiny_rl
from executor.local import local_service
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Held-out reward before and after the 16 rounds of the tiny recipe, measured with
# `python -m launch.rl --config=configs/tiny_rl.py --config.seed=S --config.sft.seed=S` for S = 0, 1,
# 2 (32 held-out trajectories per evaluation): 0.68 -> 1.13, 0.96 -> 1.63, 0.58 -> 1.18; tool calls
# per trajectory 0.28 -> 1.25, 0.47 -> 0.91, 0.19 -> 0.78. One evaluation's mean moves by about
# 0.1 between samplings, so a gain of 0.2 is far from what noise gives and far below what RL gives.
# The tests as written (the session's SFT run, 64 held-out trajectories; full RL with a bfloat16
# sampler, then LoRA) at c.seed = 0, 1, 2: full 0.58 -> 0.81, 0.91, 1.01 (tool calls 0.20 ->
# 0.69, 0.86, 0.83); LoRA 0.61 -> 0.99, 0.95, 0.96 (0.22 -> 0.69, 0.84, 0.69). The suite runs seed
# 0, whose full-RL gain (0.23) is the smallest: a change of numerics on the path is a new draw, so
# when that test fails, rerun it with c.seed = 1 and 2 before concluding that RL stopped learning.
MARGIN = 0.2


@pytest.fixture(scope="module")
def service():
  with local_service(workers=2) as s:
    yield s


def config(sft_dir, **small):
  c = tiny_rl.get_config()
  c.init.sft_workdir = sft_dir
  if small:  # A couple of short rounds, on 32 tasks (the recipe's 512 take seconds to draw).
    c.rollout.prompts, c.rollout.group_size, c.algo.mini_batch_prompts = 4, 2, 2
    c.data.synthetic_size = 32
    c.eval.every = 0
    c.train.save_rollouts = 0
    for key, value in small.items():
      section, field = key.split("__")
      c[section][field] = value
  return c


def test_rl_raises_the_held_out_reward(sft_dir, service, tmp_path):
  """The tiny recipe as the real recipes sample: with a bfloat16 copy of the float32 policy
  (rollout.param_dtype). The held-out reward rises by the margin and the tool's use grows; new
  weights reach the sampler every round without a recompilation; the learner's float32
  log-probs differ from the sampler's by bfloat16 rounding, not more (a float32 sampler's are
  equal: test_kill_and_resume_equals_the_straight_run); rollouts, transcripts, metrics and
  TensorBoard logs are written."""
  c = config(sft_dir)
  c.rollout.param_dtype = "bfloat16"
  c.eval.every, c.eval.samples = c.train.rounds, 4  # Before training and at the end.
  traces = {}

  def count_traces(done, _):
    traces[done] = dict(engine.TRACE_COUNTS)

  result = loop.train(c, str(tmp_path), executor_urls=[service.url], hooks=[count_traces])
  assert {x.dtype for x in jax.tree.leaves(result.run.policy.engine.params)} == {np.dtype("bfloat16")}
  history = result.history
  before, after = history[0], history[-1]
  assert before["round"] == 0 and after["round"] == c.train.rounds
  gain = after["eval/reward/score"] - before["eval/reward/score"]
  assert gain >= MARGIN, (before["eval/reward/score"], after["eval/reward/score"])
  # The tool is what pays here: its use grows, it does not collapse.
  assert after["eval/tool_calls_per_trajectory"] > max(0.5, before["eval/tool_calls_per_trajectory"])
  # New weights reach the sampler every round without a recompilation.
  assert traces[1] == traces[c.train.rounds - 1]
  rounds = [h for h in history if h["round"] > 0]
  mismatch = [h["actor/logprob_mismatch"] for h in rounds]
  assert 1e-5 < max(mismatch) < 0.1, mismatch
  assert all(h["rollout/sampler_idle_fraction"] < 0.5 for h in rounds)
  with open(tmp_path / "metrics.jsonl") as f:
    assert sum(1 for _ in f) == c.train.rounds + 1
  assert len(os.listdir(tmp_path / "rollouts")) == c.train.rounds
  saved = traj_lib.load_jsonl(str(tmp_path / "rollouts" / "round_00016" / "trajectories.jsonl"))
  assert len(saved) == c.train.save_rollouts and "score" in saved[0].metadata["reward"]
  with open(tmp_path / "rollouts" / "round_00016" / "transcripts.jsonl") as f:
    readable = [json.loads(line) for line in f]
  assert [r["reward"]["score"] for r in readable] == [t.metadata["reward"]["score"] for t in saved]
  assert any(call["code"] for r in readable for call in r["tool_calls"])
  assert os.listdir(tmp_path / "tensorboard")


KILLED_AFTER_ROUND_1 = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_rl_loop import config
from codevision_jax.rl import loop
from codevision_jax.sampling import engine
from codevision_jax.sampling import trajectory as traj_lib

def kill_after_round_1(done, checkpointer):
  if done == 1:
    checkpointer.wait()
    os.kill(os.getpid(), signal.SIGKILL)

loop.train(config({sft!r}, train__rounds=2, train__checkpoint_every=1), sys.argv[1],
           executor_urls=[sys.argv[2]], hooks=[kill_after_round_1])
"""


@pytest.fixture(scope="module")
def straight(sft_dir, service, tmp_path_factory):
  """Two short rounds, uninterrupted: what the killed and the preempted runs must equal."""
  c = config(sft_dir, train__rounds=2, train__checkpoint_every=1)
  return loop.train(c, str(tmp_path_factory.mktemp("straight")), executor_urls=[service.url])


def assert_resumed_equals_straight(resumed, straight):
  assert [h["round"] for h in resumed.history] == [2]
  a, b = straight.history[-1], resumed.history[0]
  for key in a:
    if not key.startswith("time/") and key not in ("rollout/sampler_idle_fraction",):
      assert a[key] == b[key], key  # The same prompts, samples, rewards and losses.
  sa, sb = jax.device_get(straight.state), jax.device_get(resumed.state)
  jax.tree.map(np.testing.assert_array_equal, sa["params"], sb["params"])
  jax.tree.map(np.testing.assert_array_equal, sa["opt_state"], sb["opt_state"])
  assert int(sa["step"]) == int(sb["step"])


def _run_script(script, workdir, service):
  return subprocess.run(
    [sys.executable, "-c", script, workdir, service.url],
    cwd=ROOT,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=900,
  )


def test_kill_and_resume_equals_the_straight_run(sft_dir, service, straight, tmp_path, caplog):
  c = config(sft_dir, train__rounds=2, train__checkpoint_every=1)
  workdir = str(tmp_path / "resumed")
  script = KILLED_AFTER_ROUND_1.format(tests=os.path.dirname(os.path.abspath(__file__)), sft=sft_dir)
  proc = _run_script(script, workdir, service)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
  with caplog.at_level(logging.INFO):
    resumed = loop.train(c, workdir, executor_urls=[service.url])
  # Quiet and in order: a resume reads no SFT run, and a healthy checkpoint warns of nothing.
  assert f"resumed from {os.path.join(workdir, 'checkpoints')} at round 1" in caplog.text
  assert "initialised from the SFT run" not in caplog.text
  assert "Metadata file does not exist" not in caplog.text
  assert_resumed_equals_straight(resumed, straight)
  # A float32 sampler: the learner's recomputed log-probs equal the sampler's (float32 noise).
  assert max(h["actor/logprob_mismatch"] for h in straight.history) < 1e-5


SIGTERMED_AFTER_ROUND_1 = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_rl_loop import config
from codevision_jax.rl import loop

def sigterm_after_round_1(done, checkpointer):
  if done == 1:
    os.kill(os.getpid(), signal.SIGTERM)

loop.train(config({sft!r}, train__rounds=2, train__checkpoint_every=2), sys.argv[1],
           executor_urls=[sys.argv[2]], hooks=[sigterm_after_round_1])
"""


def test_sigterm_finishes_the_round_saves_and_the_rerun_equals_the_straight_run(sft_dir, service, straight, tmp_path):
  """Preemption (runtime/preemption.py) in RL: SIGTERM during round 1, whose checkpoint is not
  due (every 2 rounds), finishes the round, saves it and exits with the requeue status; the
  rerun resumes there and equals the straight run."""
  workdir = str(tmp_path / "preempted")
  script = SIGTERMED_AFTER_ROUND_1.format(tests=os.path.dirname(os.path.abspath(__file__)), sft=sft_dir)
  proc = _run_script(script, workdir, service)
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE, proc.stderr[-3000:]
  assert "preempted (SIGTERM): stopped after round 1 with a checkpoint" in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
  c = config(sft_dir, train__rounds=2, train__checkpoint_every=2)
  assert_resumed_equals_straight(loop.train(c, workdir, executor_urls=[service.url]), straight)


def _calls(url):
  with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
    return int(re.search(r"^executor_calls_total (\d+)", r.read().decode(), re.M).group(1))


def test_executor_killed_mid_round_stops_the_run_with_a_clear_message(sft_dir, tmp_path):
  # The service dies once it has answered a call: the rest of that round's calls and every later
  # round's fail (four rounds, so that a round after the death has calls to fail).
  c = config(sft_dir, train__rounds=4, rollout__prompts=8, rollout__group_size=4, executor__call_deadline_s=5.0)
  with local_service(workers=1) as doomed:

    def kill_after_a_call():
      while doomed.proc.poll() is None:
        try:
          if _calls(doomed.url) >= 1:
            doomed.proc.kill()
            return
        except OSError:
          pass
        time.sleep(0.01)

    threading.Thread(target=kill_after_a_call, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"could not reach the executor service\(s\) " + re.escape(doomed.url)):
      loop.train(c, str(tmp_path), executor_urls=[doomed.url])
    assert time.perf_counter() - t0 < 300  # Failed calls end; nothing hangs.


def test_a_judge_refusing_connections_falls_back_to_the_rule(sft_dir, service, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # Nothing listens there once the socket is closed.
  c = config(sft_dir, train__rounds=1, judge__url=f"http://127.0.0.1:{port}/v1", judge__model="judge", judge__retries=0)
  result = loop.train(c, str(tmp_path), executor_urls=[service.url])
  (h,) = result.history
  assert h["rollout/judge_calls"] > 0 and h["rollout/judge_fallbacks"] == h["rollout/judge_calls"]
  assert h["judge/failures"] == h["rollout/judge_calls"] and h["judge/verdicts"] == 0
  assert os.listdir(tmp_path / "checkpoints") == ["1"]  # The round trained and was saved.
  # An RL checkpoint exports like an SFT one: the policy's parameters, not the reference's.
  out = export.export_run(str(tmp_path), str(tmp_path / "hf"))
  lm_head = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))["lm_head.weight"]
  np.testing.assert_array_equal(lm_head, np.asarray(jax.device_get(result.state["params"]["lm_head"]["kernel"])).T)


def test_records_without_ground_truth_are_refused_before_the_first_round(tmp_path):
  rows = [
    {
      "prompt": [{"role": "user", "content": "<image>Which way does the arrow point?"}],
      "images": [{"bytes": png_bytes(Image.new("RGB", (64, 64), "white"))}],
      "data_source": "test",
      "reward_model": {"ground_truth": "up" if i != 3 else None},
      "extra_info": {"question": "Which way?"},
    }
    for i in range(12)
  ]
  path = str(tmp_path / "rl.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  c = config("", train__rounds=1)
  c.data.source, c.data.paths = "files", path
  with pytest.raises(ValueError, match=re.escape(f"{path}:3: no ground truth") + ".*skip_bad"):
    loop.build(c, str(tmp_path / "run"))
  c.data.skip_bad = True
  run = loop.build(c, str(tmp_path / "run"))
  assert len(run.records) == 11


def test_an_sft_run_of_another_layout_is_named_before_the_first_round(sft_dir, tmp_path):
  c = config(sft_dir, train__rounds=1)
  c.model.scan_layers = True  # The SFT run has per-layer parameters.
  with pytest.raises(
    ValueError,
    match=re.escape(f"init.sft_workdir {sft_dir}: ") + r".*the "
    r"checkpoint has no .*layers.*model.scan_layers",
  ):
    loop.build(c, str(tmp_path / "run"))


def test_an_sft_run_with_another_vocabulary_is_named_by_its_model_fields(sft_dir, tmp_path):
  """Starting RL from an SFT run whose vocabulary differs names model.vocab_size (both values)
  and model.tokenizer, not Orbax's restore arguments; the SFT run is left as it was."""
  c = config(sft_dir)
  c.model.vocab_size += 64
  before = sorted(os.listdir(os.path.join(sft_dir, "checkpoints")))
  with pytest.raises(ValueError) as e:
    loop.build(c, str(tmp_path / "rl"))
  text = str(e.value)
  assert f"init.sft_workdir {sft_dir}: the SFT checkpoint" in text
  assert (f"model.vocab_size {c.model.vocab_size - 64} there, {c.model.vocab_size} here") in text
  assert "model.tokenizer" in text and "strict=False" not in text
  assert sorted(os.listdir(os.path.join(sft_dir, "checkpoints"))) == before
