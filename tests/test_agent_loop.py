"""The agent loop against the real executor service with a scripted policy: a good call, a call on
a tool output, malformed calls, a code error, a timeout, max images, max turns, max tokens, a bad record; the tokens it
builds equal the chat formatting of the same conversation; JSONL round trip."""

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from codevision_jax.data.records import Conversation
from codevision_jax.processing import chat
from codevision_jax.processing import image as image_lib
from codevision_jax.processing import tokenizer as tokenizer_lib
from codevision_jax.processing import code_tool
from codevision_jax.sampling import agent as agent_lib
from codevision_jax.sampling import trajectory as traj_lib
from codevision_jax.sampling.policy import ScriptedPolicy
from codevision_jax.execution import ops as ops_lib
from codevision_jax.execution.client import ExecutorClient
from executor.local import local_service

SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 8)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def service():
  with local_service(workers=2) as s:
    yield s


def call(code, index=0, description="fix the image"):
  body = json.dumps(
    {"name": "code_image_tool", "arguments": {"code": code, "description": description, "image_index": index}}
  )
  return f"<think>I should look closer.</think>\n<tool_call>\n{body}\n</tool_call>"


ROTATE = "result = image.rotate(90, expand=True)"
CROP = "result = image.crop((0, 0, image.width // 2, image.height // 2))"
ANSWER = "<think>Now I can read it.</think>\n<answer>42</answer><|im_end|>"

SCRIPTS = {
  0: [call(ROTATE), call(CROP, index=1), ANSWER],  # good calls, the second on a tool output
  1: [
    "<tool_call>\n{\"name\": \"code_image_tool\", \"arguments\": {oops\n</tool_call>",
    call(ROTATE).replace("code_image_tool", "zoom_tool"),
    call(ROTATE, index=5),
    ANSWER,
  ],  # malformed JSON, unknown tool, bad image index
  2: [call("x = 1 / 0\nresult = image"), ANSWER],  # code error
  3: [call("while True:\n  pass"), ANSWER],  # timeout
  4: [call(ROTATE)] * 10,  # max images on the third call, then max turns
  5: ["<think>No tool needed.</think> The answer is unclear.<|im_end|>"],  # eos
  6: ["<think>" + "long thought " * 800 + "</think>"],  # max tokens
}


def records():
  out = []
  for i in range(len(SCRIPTS)):
    img = Image.new("RGB", (120 + 8 * i, 80), (200, 30 * i, 90))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out.append(
      Conversation(
        messages=[{"role": "user", "content": "<image>What number is shown?"}],
        images=[buf.getvalue()],
        ground_truth="42",
        origin=f"test:{i}",
      )
    )
  out.append(
    Conversation(messages=[{"role": "user", "content": "<image>Hm?"}], images=[b"not an image"], origin="test:bad")
  )  # ends as an error
  return out


@pytest.fixture(scope="module")
def run(tok, service):
  policy = ScriptedPolicy(tok, SCRIPTS, num_slots=3, steps_per_call=16)
  config = agent_lib.AgentConfig(max_turns=4, max_total_tokens=2500, tool_timeout_s=1.0, max_images=3)

  async def go():
    async with ExecutorClient(service.url) as client:
      return await agent_lib.run_agent(policy, records(), tok, client, SETTINGS, config)

  trajectories, stats = asyncio.run(go())
  return trajectories, stats, policy


def test_finish_reasons_and_calls(run):
  trajs, stats, _ = run
  assert [t.finish_reason for t in trajs] == [
    "answer",
    "answer",
    "answer",
    "answer",
    "max_turns",
    "eos",
    "max_tokens",
    "error",
  ]
  assert "test:bad" in trajs[7].error and trajs[7].token_ids == []
  good = trajs[0].tool_calls
  assert [c.status for c in good] == ["ok", "ok"]
  assert [c.image_index for c in good] == [0, 1]
  assert [c.result_image_index for c in good] == [1, 2]
  assert ops_lib.core_ops(good[0].ops) == {"rotate_90"} and ops_lib.core_ops(good[1].ops) == {"crop"}
  assert all(c.latency_s > 0 for c in good)
  assert len(trajs[0].images) == 3 and [im.source for im in trajs[0].images] == ["input", "tool", "tool"]
  # The crop ran on the full-resolution rotated image (80x120 -> 40x60).
  assert Image.open(io.BytesIO(trajs[0].images[2].png)).size == (40, 60)
  assert [c.status for c in trajs[1].tool_calls] == ["parse_error"] * 3
  assert "not valid JSON" in trajs[1].tool_calls[0].error
  assert "unknown tool" in trajs[1].tool_calls[1].error
  assert "image_index" in trajs[1].tool_calls[2].error
  assert trajs[2].tool_calls[0].status == "code_error"
  assert "ZeroDivisionError" in trajs[2].tool_calls[0].error
  assert trajs[3].tool_calls[0].status == "code_error"
  assert "Timeout" in trajs[3].tool_calls[0].error
  assert trajs[4].num_turns == 4 and [c.status for c in trajs[4].tool_calls] == ["ok", "ok", "limit"]
  assert len(trajs[4].images) == 3
  assert trajs[6].num_turns == 0 and len(trajs[6].token_ids) == 2500
  assert trajs[1].num_tool_errors == 3
  assert stats.tool_calls == 2 + 1 + 1 + 2
  assert stats.decode_calls > 0 and stats.wall_s > 0


def test_error_messages_reach_the_policy(run, tok):
  trajs, _, policy = run
  for i, needle in ((1, "not valid JSON"), (2, "ZeroDivisionError"), (3, "Timeout")):
    tool_turn = tok.decode(policy.appended[i][1], skip_special_tokens=False)
    assert tool_turn.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\nError: ")
    assert needle in tool_turn
    assert tool_turn.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tokens_equal_the_chat_formatting(run, tok):
  """The good trajectory, rebuilt as messages and tokenised by the SFT formatting, is the same
  token sequence; the policy mask covers exactly the sampled assistant text."""
  traj = run[0][0]
  messages = [
    {"role": "system", "content": code_tool.SYSTEM_PROMPT},
    {"role": "user", "content": "<image>What number is shown?"},
    {"role": "assistant", "content": SCRIPTS[0][0]},
    {"role": "tool", "content": "Image 1: <image>"},
    {"role": "assistant", "content": SCRIPTS[0][1]},
    {"role": "tool", "content": "Image 2: <image>"},
    {"role": "assistant", "content": SCRIPTS[0][2][: -len("<|im_end|>")]},
  ]
  counts = image_lib.num_image_tokens([im.grid_thw for im in traj.images])
  ref = chat.tokenize_conversation(tok, messages, counts, tools=[code_tool.CODE_IMAGE_TOOL])
  np.testing.assert_array_equal(traj.token_ids, ref.input_ids[:-1])  # Ends at the last <|im_end|>.
  sampled = [t for t, m in zip(traj.token_ids, traj.policy_mask) if m]
  expected = sum((list(tok(s, add_special_tokens=False)["input_ids"]) for s in SCRIPTS[0]), [])
  assert sampled == expected
  assert all(lp == -1.0 for lp, m in zip(traj.logprobs, traj.policy_mask) if m)
  assert traj.prompt_length == len(run[2].appended[0][0])


def test_jsonl_round_trip(run, tmp_path):
  trajs = run[0]
  path = str(tmp_path / "trajectories.jsonl")
  traj_lib.save_jsonl(trajs, path)
  back = traj_lib.load_jsonl(path)
  assert back == trajs
  assert (tmp_path / "images" / "0_2.png").exists()
