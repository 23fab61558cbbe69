"""The rollout service (`rl.rollouts`): answers are judged as their trajectories finish, the judge's
calls overlapping; one summary reads the same from trajectories and from their transcripts, and
flattens into RL's metric names; the old `sampling` section is refused naming the new keys; the
executor context checks the services it is given."""

import asyncio
import dataclasses
import io
import socket

import ml_collections
import pytest
from PIL import Image

from codevision_jax.data import records
from codevision_jax.execution.client import ExecutorUnavailable
from codevision_jax.processing import image as image_lib
from codevision_jax.processing import tokenizer as tokenizer_lib
from codevision_jax.rl import rollouts, scoring, transcript
from codevision_jax.sampling.environment import AgentConfig
from codevision_jax.sampling.policy import ScriptedPolicy
from codevision_jax.sampling.trajectory import CallStatus, Finish
from configs import tiny_rollout
from test_rl_scoring import CROP_ON_1, ROTATE_270, trajectory

SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 8)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def record(k):
  buf = io.BytesIO()
  Image.new("RGB", (56, 56), (200, 10, 10)).save(buf, "PNG")
  return records.Conversation(
    messages=[{"role": "user", "content": f"<image>\nWhat is {k}?"}],
    images=[buf.getvalue()],
    ground_truth=f"answer {k}",
    question=f"What is {k}?",
  )


class SlowJudge:
  """Says yes to everything after `delay_s`; records how many trajectories had finished when
  each verdict began, and the most verdicts in flight at once."""

  def __init__(self, finished: list, delay_s: float = 0.2):
    self.finished, self.delay_s = finished, delay_s
    self.began_after, self.in_flight, self.peak = [], 0, 0

  async def verdict(self, question, truth, prediction):
    self.began_after.append(len(self.finished))
    self.in_flight += 1
    self.peak = max(self.peak, self.in_flight)
    await asyncio.sleep(self.delay_s)
    self.in_flight -= 1
    return True


def test_answers_are_judged_as_their_trajectories_finish(tok):
  """Six records on two slots: the judge is asked about the first answers while later records
  still decode, and its calls overlap; every answer (which the rule rejects) is then correct by
  the judge, and the summary counts the judge's calls."""
  n = 6
  policy = ScriptedPolicy(
    tok, {k: [f"<think>Hm.</think>\n<answer>{k} maybe</answer><|im_end|>"] for k in range(n)}, num_slots=2
  )
  finished = []
  judge = SlowJudge(finished)

  async def go():
    return await rollouts.rollout(
      policy,
      [record(k) for k in range(n)],
      tokenizer=tok,
      client=None,
      settings=SETTINGS,
      agent=AgentConfig(max_turns=2, max_total_tokens=2000, system_prompt=False),
      judge=judge,
      on_finish=finished.append,
    )

  ro = asyncio.run(go())
  assert [t.id for t in ro.trajectories] == list(range(n))
  assert len(judge.began_after) == n
  assert min(judge.began_after) < n  # Judging began before the last trajectory finished.
  assert judge.peak >= 2  # Not one call after another.
  assert all(p["from_judge"] == 1.0 and p["correct"] == 1.0 for p in ro.parts)
  assert list(ro.group_ids) == list(range(n))  # Each record its own group by default.
  summary = ro.summary()
  assert summary["accuracy"] == 1.0 and summary["judge_calls"] == n
  assert summary["finish"] == {"answer": 1.0} and summary["tool_calls"] == 0
  assert set(summary) <= set(rollouts.SUMMARY)
  assert summary["time"]["scoring_s"] >= 0.0 and "sampler_idle_fraction" in summary["time"]


def test_summary_of_trajectories_equals_that_of_their_transcripts(tok):
  """RL and launch.rollout summarise trajectories, the eval report their transcript records: the
  same summary either way, with the tool statistics of the calls."""
  failed = dataclasses.replace(ROTATE_270, status=CallStatus.CODE_ERROR, result_image_index=None, ops=[])
  trajs = [
    trajectory(
      tok,
      ["<think>turn it</think>", "<think>crop</think>", "<think>read</think>\n<answer>PENCIL</answer>"],
      calls=[ROTATE_270, CROP_ON_1],
      n_images=3,
    ),
    trajectory(tok, ["<think>x</think>", "<think>guess</think>\n<answer>LEMON</answer>"], calls=[failed]),
    trajectory(tok, ["<think>guess</think>\n<answer>pencil</answer>"]),
  ]
  for k, t in enumerate(trajs):
    t.id, t.finish_reason = k, Finish.ANSWER if k < 2 else Finish.MAX_TURNS
  _, parts, _ = asyncio.run(scoring.score(trajs, [0, 0, 0], tok))
  direct = rollouts.summarize([rollouts.Outcome.of(t, p) for t, p in zip(trajs, parts)])
  lines = [
    {**transcript.transcript(tok, t, p), "response_tokens": int(sum(t.policy_mask))} for t, p in zip(trajs, parts)
  ]
  read = rollouts.summarize([rollouts.Outcome.of_record(r) for r in lines])
  assert read == direct
  assert direct["trajectories"] == 3 and direct["with_ground_truth"] == 3
  assert direct["accuracy"] == pytest.approx(1 / 3)
  assert direct["reward"]["score"] == pytest.approx(sum(p["score"] for p in parts) / 3)
  assert direct["tool_calls"] == 3 and direct["tool_calls_per_trajectory"] == 1.0
  assert direct["tool_use_rate"] == pytest.approx(2 / 3)
  assert direct["tool_error_rate"] == pytest.approx(1 / 3)
  assert direct["tool_status"] == {"ok": 2, "code_error": 1}
  assert direct["ops"] == {"rotate_270": 1, "crop": 1}
  assert direct["finish"] == {"answer": pytest.approx(2 / 3), "max_turns": pytest.approx(1 / 3)}
  assert direct["turns"] == pytest.approx(sum(t.num_turns for t in trajs) / 3)
  # No ground truth: counted, not graded.
  trajs[2].metadata["ground_truth"] = None
  ungraded = rollouts.summarize([rollouts.Outcome.of(t, p) for t, p in zip(trajs, parts)])
  assert ungraded["with_ground_truth"] == 2 and ungraded["accuracy"] == 0.5


def test_metrics_are_rl_names():
  summary = {
    "accuracy": 0.5,
    "reward": {"score": 1.25},
    "finish": {"answer": 1.0},
    "tool_error_rate": 0.0,
    "response_tokens": None,
    "time": {"rollout_s": 3.0},
  }
  assert rollouts.metrics(summary, "rollout") == {
    "rollout/accuracy": 0.5,
    "rollout/reward/score": 1.25,
    "rollout/finish/answer": 1.0,
    "rollout/tool_error_rate": 0.0,
  }


def test_the_old_sampling_section_names_the_new_keys():
  cfg = tiny_rollout.get_config()
  rollouts.check_config(cfg)  # The recipe itself is fine.
  with cfg.unlocked():
    cfg.sampling = ml_collections.ConfigDict({"samples": 2, "slots": 4, "seed": 1})
  with pytest.raises(
    ValueError,
    match=r"sampling\.samples -> rollout\.group_size; "
    r"sampling\.seed -> seed; sampling\.slots -> rollout\.slots",
  ):
    rollouts.check_config(cfg)


def test_executor_services_check_the_urls_given():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
  with rollouts.executor_services(f"{dead}, ", needed=False) as urls:
    assert urls == [dead]  # No tool will run: nothing started or checked.
  with pytest.raises(ExecutorUnavailable, match=f"(?s){dead}.*pass its URL in --executor"):
    with rollouts.executor_services([dead], setting="--executor"):
      pass
