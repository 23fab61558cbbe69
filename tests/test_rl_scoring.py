"""Scoring trajectories: the policy text, operations from the executor trace with crop boxes
carried back to the first image through result maps, rule and judge correctness, the reward."""

import asyncio
import dataclasses
import socket

import numpy as np
import pytest

from codevision_jax.processing import tokenizer as tokenizer_lib
from codevision_jax.rl import scoring
from codevision_jax.rl.judge import Judge
from codevision_jax.sampling.trajectory import CallStatus, ToolCallRecord, Trajectory, TrajectoryImage


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def trajectory(tok, turns, calls=(), n_images=1, **meta):
  """Prompt tokens, then each turn's tokens sampled (mask 1) with a tool turn (mask 0) between."""
  traj = Trajectory(
    id=0,
    metadata={
      "ground_truth": "PENCIL",
      "question": "What word?",
      "required_transforms": ["rotate_90", "crop"],
      "target_box": [100, 50, 300, 150],
      **meta,
    },
  )
  traj.add(tok("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")["input_ids"], 0)
  for k, text in enumerate(turns):
    if k:
      traj.add(
        tok("<|im_start|>user\n<tool_response>\nImage 1\n</tool_response><|im_end|>\n<|im_start|>assistant\n")[
          "input_ids"
        ],
        0,
      )
    traj.add(tok(text + "<|im_end|>")["input_ids"], 1, np.zeros(1))
  traj.images = [TrajectoryImage(b"", [1, 2, 2], "input")] + [
    TrajectoryImage(b"", [1, 2, 2], "tool") for _ in range(n_images - 1)
  ]
  traj.tool_calls = list(calls)
  return traj


# Image 1 is image 0 (400 x 200) rotated 270 counter-clockwise (90 clockwise), 200 x 400: its
# pixel (x, y) shows image 0's (y, 200 - x).
ROTATE_270 = ToolCallRecord(
  turn=1,
  raw="",
  code="...",
  image_index=0,
  result_image_index=1,
  ops=[{"op": "rotate", "angle": 270, "expand": True}],
  result_map={"source": 0, "map": [0.0, 1.0, 0.0, -1.0, 0.0, 200.0]},
)
CROP_ON_1 = ToolCallRecord(
  turn=2,
  raw="",
  code="...",
  image_index=1,
  result_image_index=2,
  ops=[{"op": "crop", "box": [50, 100, 150, 300], "source": 1}],
)


def test_response_text_and_operations(tok):
  traj = trajectory(
    tok,
    ["<think>turn it</think>", "<think>crop</think>", "<think>read</think>\n<answer>PENCIL</answer>"],
    calls=[ROTATE_270, CROP_ON_1],
    n_images=3,
  )
  text = scoring.response_text(tok, traj)
  assert text == "<think>turn it</think>\n<think>crop</think>\n<think>read</think>\n<answer>PENCIL</answer>"
  names, boxes = scoring.operations(traj)
  assert names == {"rotate_270", "crop"}
  # The crop (50, 100)-(150, 300) of the rotated copy is (100, 50)-(300, 150) of the original.
  assert boxes == [[100.0, 50.0, 300.0, 150.0]]
  # Without the rotation's result map the crop cannot be placed on the original.
  lost = dataclasses.replace(ROTATE_270, result_map=None)
  assert scoring.operations(trajectory(tok, ["a"], calls=[lost, CROP_ON_1], n_images=3))[1] == []


def test_scores_of_a_group(tok):
  good = trajectory(
    tok,
    ["<think>turn it</think>", "<think>crop</think>", "<think>read</think>\n<answer>PENCIL</answer>"],
    calls=[ROTATE_270, CROP_ON_1],
    n_images=3,
  )
  failed = dataclasses.replace(ROTATE_270, status=CallStatus.CODE_ERROR, result_image_index=None, ops=[])
  wrong = trajectory(tok, ["<think>x</think>", "<think>guess</think>\n<answer>LEMON</answer>"], calls=[failed])
  no_tool = trajectory(tok, ["<think>guess</think>\n<answer>pencil</answer>"])
  scores, parts, stats = asyncio.run(scoring.score([good, wrong, no_tool], [0, 0, 0], tok))
  # Right answer, format, both required ops with a perfect crop, exactly the required ops,
  # 2 calls (not over max(2, |req|)).
  assert parts[0]["correct"] == 1.0 and parts[0]["fmt"] == 1.0 and parts[0]["r_mandatory"] == 1.0
  assert parts[0]["r_exact"] == 0.1 and parts[0]["c_usage"] == 0.0
  assert scores[0] == pytest.approx(1.0 + 0.1 + 1.0 + 0.1)
  # A failed call: -0.05; wrong answer; no ops.
  assert parts[1]["tool_errors"] == 1.0 and scores[1] == pytest.approx(0.1 - 0.05)
  # "pencil" is not "PENCIL" by the rule; crop required and not done: r_acc gated anyway.
  assert parts[2]["correct"] == 0.0 and scores[2] == pytest.approx(0.1)
  assert stats.judged == 0


def test_judge_decides_what_the_rule_does_not_and_falls_back_when_down(tok):
  no_tool = trajectory(tok, ["<think>guess</think>\n<answer>pencil</answer>"], required_transforms=[], target_box=None)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

  async def go():
    async with Judge(f"http://127.0.0.1:{port}/v1", "m", retries=0) as judge:
      return await scoring.score([no_tool], [0], tok, judge=judge)

  scores, parts, stats = asyncio.run(go())
  assert stats.judged == 1 and stats.judge_fallbacks == 1 and parts[0]["correct"] == 0.0

  class Yes:
    async def verdict(self, question, truth, prediction):
      assert (question, truth, prediction) == ("What word?", "PENCIL", "pencil")
      return True

  scores, parts, stats = asyncio.run(scoring.score([no_tool], [0], tok, judge=Yes()))
  assert parts[0]["correct"] == 1.0 and stats.judge_yes == 1
  assert scores[0] == pytest.approx(1.0 + 0.1)


def test_transcript_of_a_trajectory(tok):
  """The readable record: every turn's text (tool turns with images as <image>), each call's code,
  status, stdout, error and result image, the answer, correctness and reward parts."""
  from codevision_jax.rl import transcript

  failed_crop = dataclasses.replace(
    CROP_ON_1, status=CallStatus.CODE_ERROR, error="ValueError: box outside", result_image_index=None
  )
  traj = trajectory(
    tok,
    ["<think>turn it</think>", "<think>crop</think>", "<think>read</think>\n<answer>PENCIL</answer>"],
    calls=[dataclasses.replace(ROTATE_270, stdout="(200, 400)\n"), failed_crop],
    n_images=2,
  )
  prompt = tok("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
  traj.id, traj.prompt_length = 7, len(prompt)
  _, parts, _ = asyncio.run(scoring.score([traj], [0], tok))
  record = transcript.transcript(tok, traj, parts[0])
  assert [t["role"] for t in record["turns"]] == ["assistant", "tool"] * 2 + ["assistant"]
  assert record["turns"][0]["text"] == "<think>turn it</think>"
  assert record["turns"][1]["text"] == "<tool_response>\nImage 1\n</tool_response>"
  assert record["answer"] == "PENCIL" and record["correct"] is True
  assert record["reward"]["score"] == pytest.approx(parts[0]["score"])
  assert record["reward"]["tool_errors"] == 1.0
  first, second = record["tool_calls"]
  assert first["code"] == "..." and first["stdout"] == "(200, 400)\n" and first["status"] == "ok"
  assert first["result_image"] == "images/7_1.png" and first["ops"] == ["rotate_270"]
  assert second["status"] == "code_error" and second["error"] == "ValueError: box outside"
  assert second["result_image"] is None
  assert record["images"] == ["images/7_0.png", "images/7_1.png"]
  # Image tokens read as <image>; without ground truth nothing is graded.
  ids = tok(
    "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|image_pad|>"
    "<|vision_end|>\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
  )["input_ids"]
  assert transcript._text(tok, ids) == "<tool_response>\n<image>\n</tool_response>"
  traj.metadata["ground_truth"] = None
  record = transcript.transcript(tok, traj, parts[0])
  assert record["correct"] is None and record["reward"] is None and record["answer"] == "PENCIL"


def test_parts_say_which_evidence_they_came_from(tok):
  good = trajectory(
    tok,
    ["<think>turn it</think>", "<think>crop</think>", "<think>read</think>\n<answer>PENCIL</answer>"],
    calls=[ROTATE_270, CROP_ON_1],
    n_images=3,
  )
  no_tool = trajectory(tok, ["<think>guess</think>\n<answer>pencil</answer>"], required_transforms=[], target_box=None)

  class Yes:
    async def verdict(self, question, truth, prediction):
      return True

  _, parts, _ = asyncio.run(scoring.score([good, no_tool], [0, 0], tok, judge=Yes()))
  assert (parts[0]["from_rule"], parts[0]["from_judge"], parts[0]["judge_fallback"]) == (1, 0, 0)
  assert parts[0]["evidence_calls"] == 2.0 and parts[0]["evidence_crop_boxes"] == 1.0
  assert (parts[1]["from_rule"], parts[1]["from_judge"]) == (0, 1)
  assert parts[1]["evidence_calls"] == 0.0
  assert all(isinstance(v, float) for p in parts for v in p.values())  # saved as numbers
  assert {"r_acc", "r_mandatory", "r_emerge", "r_spurious", "fmt"} <= set(scoring.EVIDENCE)


def test_judge_calls_run_concurrently_up_to_the_judges_limit(tok):
  """Eight answers the rule rejects go to the judge at once: the endpoint sees at most
  `max_concurrency` (3) in flight, and does see 3, not one after another."""
  from test_rl_judge import FakeEndpoint, serve

  wrong = [
    trajectory(tok, [f"<think>guess</think>\n<answer>pencil {k}</answer>"], required_transforms=[], target_box=None)
    for k in range(8)
  ]
  endpoint = FakeEndpoint()

  async def go():
    web_runner, url = await serve(endpoint)
    try:
      async with Judge(url, "judge", max_concurrency=3) as judge:
        return await scoring.score(wrong, list(range(8)), tok, judge=judge)
    finally:
      await web_runner.cleanup()

  _, parts, stats = asyncio.run(go())
  assert endpoint.requests == 8 and endpoint.peak == 3
  assert stats.judged == 8 and stats.judge_yes == 8  # "PENCIL" is in every "pencil k".
  assert all(p["from_judge"] == 1.0 and p["correct"] == 1.0 for p in parts)


def test_score_verdicts_equals_score(tok):
  """Verdicts taken one by one (as `rl.rollouts` does when trajectories finish) score as `score`
  does for the whole group."""
  good = trajectory(
    tok,
    ["<think>turn it</think>", "<think>crop</think>", "<think>read</think>\n<answer>PENCIL</answer>"],
    calls=[ROTATE_270, CROP_ON_1],
    n_images=3,
  )
  no_tool = trajectory(tok, ["<think>guess</think>\n<answer>PENCIL</answer>"])
  trajs = [good, no_tool]
  want = asyncio.run(scoring.score(trajs, [0, 0], tok))
  verdicts = [asyncio.run(scoring.verdict(t, tok)) for t in trajs]
  got = scoring.score_verdicts(trajs, [0, 0], verdicts)
  np.testing.assert_array_equal(got[0], want[0])
  assert got[1] == want[1] and got[2] == want[2]
  with pytest.raises(ValueError, match="one of each per trajectory"):
    scoring.score_verdicts(trajs, [0], verdicts)
