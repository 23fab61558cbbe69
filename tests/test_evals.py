"""The eval runner and report: transforms land pixels and boxes where they should, the tools-off
baseline gets one turn and no schema, cases are scored by the RL reward's rules, an interrupted
eval resumes without scoring a case twice, and the report files hold the expected fields; then the
eval end to end on the tiny model (`evals.orientation.evaluate`)."""

import asyncio
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from codevision_jax.data import records
from codevision_jax.execution.client import ExecutorClient
from codevision_jax.processing import image as image_lib
from codevision_jax.processing import orientation
from codevision_jax.processing import tokenizer as tokenizer_lib
from codevision_jax.rl import reward
from codevision_jax.sampling.environment import AgentConfig
from codevision_jax.sampling.policy import ScriptedPolicy
from evals import orientation as orientation_eval
from evals import report as report_lib
from evals import runner
from evals.suites import EvalItem
from executor.local import local_service

SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = [30, 10, 42, 16]  # A red block in a 64 x 40 image.


def block_image() -> bytes:
  a = np.full((40, 64, 3), 255, np.uint8)
  a[BLOCK[1] : BLOCK[3], BLOCK[0] : BLOCK[2]] = (255, 0, 0)
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, "PNG")
  return buf.getvalue()


def item(i, answers, **kw):
  return EvalItem(
    suite="ocrbench",
    id=str(i),
    question=f"Question {i}?",
    answers=answers,
    image=block_image(),
    source=f"test.json:{i}",
    **kw,
  )


@pytest.mark.parametrize("transform", orientation.TRANSFORMS)
def test_case_record_moves_pixels_box_and_requirements(transform):
  case = runner.Case(item(0, ["a", "b"], required_transforms=["crop"], target_box=BLOCK), transform, "on")
  rec = runner.case_record(case)
  a = np.asarray(records.load_image(rec.images[0]))
  ys, xs = np.nonzero((a[..., 0] > 200) & (a[..., 1] < 50))
  assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == rec.target_box
  assert rec.target_box == orientation.transform_box(BLOCK, transform, (64, 40))
  expected_size = (40, 64) if transform in ("rotate_90", "rotate_270") else (64, 40)
  assert (a.shape[1], a.shape[0]) == expected_size
  assert rec.required_transforms == ["crop"] + ([transform] if transform != "none" else [])
  assert rec.ground_truth == ["a", "b"] and rec.answer == "a"
  assert rec.messages == [{"role": "user", "content": "<image>\nQuestion 0?"}]


def test_cases_and_modes():
  items = [item(0, ["1"]), item(1, ["2"], required_transforms=["rotate_90", "crop"])]
  cases = runner.make_cases(items, ["none", "flip_vertical"], ["on", "off"])
  # An item published with an orientation change is asked only as published.
  assert [c.key for c in cases] == [
    "ocrbench/0/none/on",
    "ocrbench/0/flip_vertical/on",
    "ocrbench/1/none/on",
    "ocrbench/0/none/off",
    "ocrbench/0/flip_vertical/off",
    "ocrbench/1/none/off",
  ]
  off = runner.agent_config("off", AgentConfig(max_turns=8, system_prompt=True))
  assert off.max_turns == 1 and not off.system_prompt
  assert runner.agent_config("on", AgentConfig(max_turns=8)).max_turns == 8
  with pytest.raises(ValueError, match="rotate_45"):
    runner.make_cases(items, ["rotate_45"], ["on"])
  with pytest.raises(ValueError, match="maybe"):
    runner.make_cases(items, ["none"], ["maybe"])


def call(code):
  body = json.dumps(
    {"name": "code_image_tool", "arguments": {"code": code, "description": "undo it", "image_index": 0}}
  )
  return f"<think>It is rotated.</think>\n<tool_call>\n{body}\n</tool_call>"


# Cases per mode, in order: item 0 none, item 0 rotate_90, item 1 none, item 1 rotate_90.
SCRIPTS = {
  0: ["<think>Clear.</think>\n<answer>42</answer><|im_end|>"],
  1: [call("result = image.rotate(270, expand=True)"), "<think>Upright now.</think>\n<answer>42</answer><|im_end|>"],
  2: ["<think>Easy.</think>\n<answer>0.75</answer><|im_end|>"],
  3: ["<think>Hm.</think>\n<answer>nope</answer><|im_end|>"],
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def service():
  with local_service(workers=2) as s:
    yield s


def run(cases, out, tok, service, chunk=64, on_scored=None):
  policy = ScriptedPolicy(tok, SCRIPTS, num_slots=2)

  async def go():
    async with ExecutorClient(service.url) as client:
      return await runner.run_cases(
        cases,
        out,
        policy=policy,
        tokenizer=tok,
        client=client,
        settings=SETTINGS,
        agent=AgentConfig(max_turns=4, max_total_tokens=2000),
        chunk=chunk,
        on_scored=on_scored,
      )

  return asyncio.run(go())


def cases():
  items = [item(0, ["42"], target_box=BLOCK), item(1, ["3/4"])]
  return runner.make_cases(items, ["none", "rotate_90"], ["on", "off"])


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tok, service):
  out = str(tmp_path_factory.mktemp("eval"))
  stats = run(cases(), out, tok, service)
  return out, stats, runner.load_results(out)


def test_scored_as_the_rl_reward(scored):
  out, stats, results = scored
  assert stats.scored == 8 and stats.skipped == 0
  r = results["ocrbench/0/rotate_90/on"]
  assert r["correct"] and r["answer"] == "42" and r["finish_reason"] == "answer"
  assert r["tool_calls"][0]["ops"] == ["rotate_270"] and r["tool_calls"][0]["status"] == "ok"
  # Required rotate_90 undone by rotate_270: the full mandatory reward and the exact-set bonus.
  assert r["reward"]["r_mandatory"] == 1.0 and r["reward"]["r_exact"] == pytest.approx(0.1)
  assert r["reward"]["fmt"] == 1.0
  for k in range(2):  # The input image and the tool's result, beside results.jsonl.
    assert os.path.exists(os.path.join(out, r["images"][k]))
  assert r["tool_calls"][0]["result_image"] == r["images"][1]
  # 0.75 against "3/4": the answer rule's fraction match, as in training.
  assert results["ocrbench/1/none/on"]["correct"]
  assert reward.answers_match("0.75", "3/4")
  assert not results["ocrbench/1/rotate_90/on"]["correct"]
  # Without tools the model gets one turn: the same call ends the trajectory unrun and unscored.
  off = results["ocrbench/0/rotate_90/off"]
  assert off["finish_reason"] == "max_turns" and not off["correct"]
  assert off["tool_calls"] == []
  assert results["ocrbench/0/none/off"]["correct"]
  assert {r["tools"] for r in results.values()} == {"on", "off"}


def test_resume_scores_each_case_once(tmp_path, tok, service):
  out = str(tmp_path)

  class Stop(Exception):
    pass

  def stop(n):
    raise Stop

  with pytest.raises(Stop):  # Killed after the first chunk of 3.
    run(cases(), out, tok, service, chunk=3, on_scored=stop)
  assert len(runner.load_results(out)) == 3
  with open(os.path.join(out, runner.RESULTS), "a") as f:
    f.write('{"key": "ocrbench/1/none/on", "torn')  # A write cut short.
  stats = run(cases(), out, tok, service, chunk=3)
  assert stats.skipped == 3 and stats.scored == 5
  with open(os.path.join(out, runner.RESULTS)) as f:
    keys = [json.loads(line)["key"] for line in f]
  assert sorted(keys) == sorted(c.key for c in cases())


def test_report_files(scored):
  out, _, results = scored
  bad = [{"suite": "ocrbench", "file": "OCRBench.json", "row": 7, "reason": "image missing"}]
  report = report_lib.write_report(
    out, list(results.values()), meta={"model": "scripted", "notes": ["rule-only"]}, bad_items=bad
  )
  with open(os.path.join(out, "report.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(report))
  on = on_disk["suites"]["ocrbench"]["on"]
  assert on["by_transform"]["rotate_90"]["accuracy"] == 0.5
  assert on["by_transform"]["rotate_90"]["trajectories"] == 2
  assert on["by_transform"]["rotate_90"]["ops"] == {"rotate_270": 1}
  assert on["by_transform"]["rotate_90"]["tool_calls_per_trajectory"] == 0.5
  assert on["by_transform"]["rotate_90"]["tool_error_rate"] == 0.0
  assert on["by_transform"]["none"]["finish"] == {"answer": 1.0}
  assert on["average_accuracy"] == pytest.approx(0.75)
  assert on_disk["suites"]["ocrbench"]["off"]["by_transform"]["rotate_90"]["accuracy"] == 0.0
  assert on_disk["bad_items"] == {"ocrbench": 1}
  assert on_disk["published"]["ocrbench"][0] == ["Qwen2.5-VL-7B", "none", 86.4]
  md = open(os.path.join(out, "report.md")).read()
  assert "| rotate_90 | 50.0 | 0.0 | 2 |" in md
  assert "Published (CodeVision paper" in md and "| Qwen2.5-VL-7B | average | 56.0 |" in md
  html = open(os.path.join(out, "report.html")).read()
  assert "ocrbench/0/rotate_90/on" in html and "data:image/png;base64," in html


def test_request_errors_before_the_model(tmp_path):
  with pytest.raises(orientation_eval.EvalError, match="--data=PATH"):
    orientation_eval.read_items("ocrbench", None)
  with pytest.raises(orientation_eval.EvalError, match="unknown --suite='ocr'"):
    orientation_eval.read_items("ocr", "x.json")
  with pytest.raises(orientation_eval.EvalError, match="--suite=synthetic"):
    orientation_eval.read_items("synthetic", "x.json")
  with pytest.raises(orientation_eval.EvalError, match="neither an HF checkpoint"):
    orientation_eval.model_dir(str(tmp_path), str(tmp_path / "out"))


def eval_config(**fields):
  """The eval's default rollout config with `fields` ("agent.max_turns": 2, ...) set."""
  from configs import orientation_eval as recipe

  cfg = recipe.get_config()
  for key, value in fields.items():
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
  return cfg


def test_evaluate_the_tiny_model_end_to_end(tmp_path):
  out = str(tmp_path / "eval")
  limits = {
    "agent.max_turns": 2,
    "agent.max_total_tokens": 400,
    "agent.system_prompt": False,
    "rollout.slots": 4,
    "data.max_pixels": 28 * 28 * 16,
  }
  kw = dict(
    synthetic_size=2,
    synthetic_kinds=("arrow",),
    transforms=("none", "flip_vertical"),
    config=eval_config(**limits),
    progress=False,
  )
  report = orientation_eval.evaluate(out, **kw)
  assert report["run"]["scored"] == 8 and report["run"]["executor_failures"] == 0
  suite = report["suites"]["synthetic"]
  assert set(suite) == {"on", "off"}
  assert set(suite["on"]["by_transform"]) == {"none", "flip_vertical"}
  assert suite["on"]["all"]["trajectories"] == 4
  for name in ("report.json", "report.md", "report.html", "results.jsonl", "bad_items.jsonl"):
    assert os.path.exists(os.path.join(out, name)), name
  assert any("random weights" in n for n in report["meta"]["notes"])
  assert any("rule-only" in n for n in report["meta"]["notes"])
  again = orientation_eval.evaluate(out, **kw)  # Resumes: nothing left to run.
  assert again["run"]["scored"] == 0 and again["run"]["skipped"] == 8
  with pytest.raises(orientation_eval.EvalError, match="seed: 0 -> 1"):
    orientation_eval.evaluate(out, **{**kw, "config": eval_config(**limits, seed=1)})


def test_the_binary_on_a_published_suite_with_a_bad_item(tmp_path):
  """`python -m evals.orientation` on an OCRBench file whose second image is missing: the bad
  item is listed by file and row and counted, the rest are asked, the report says rule-only."""
  images = tmp_path / "OCRBench_Images" / "IIIT5K"
  images.mkdir(parents=True)
  Image.new("RGB", (48, 32), (250, 250, 250)).save(images / "a.png")
  rows = [
    {
      "dataset_name": "IIIT5K",
      "id": k,
      "image_path": f"IIIT5K/{name}",
      "question": "what is written in the image?",
      "answers": ["CAFE"],
      "type": "Regular Text Recognition",
    }
    for k, name in enumerate(["a.png", "gone.png"])
  ]
  data = tmp_path / "OCRBench.json"
  data.write_text(json.dumps(rows))
  out = tmp_path / "eval"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "evals.orientation",
      "--suite=ocrbench",
      f"--data={data}",
      f"--out={out}",
      "--tools=off",
      "--transforms=none,rotate_180",
      "--config.agent.max_total_tokens=300",
      "--config.data.max_pixels=3136",
      "--config.rollout.slots=2",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ocrbench, tools off: average" in proc.stdout and "report.html" in proc.stdout
  (bad,) = [json.loads(line) for line in open(out / "bad_items.jsonl")]
  assert bad["row"] == 1 and bad["file"] == str(data) and "gone.png" in bad["reason"]
  report = json.load(open(out / "report.json"))
  assert report["bad_items"] == {"ocrbench": 1}
  assert report["suites"]["ocrbench"]["off"]["all"]["trajectories"] == 2  # One item, two transforms.
  assert any("rule-only" in n for n in report["meta"]["notes"])
  assert "ocrbench (1 bad item(s) left out" in open(out / "report.md").read()
  proc = subprocess.run(
    [sys.executable, "-m", "evals.orientation", "--suite=ocrbench", f"--out={tmp_path / 'x'}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode != 0 and "--suite=ocrbench reads its published file" in proc.stderr
  # The agent and sampler settings are the rollout config's: an old flag names its field.
  proc = subprocess.run(
    [sys.executable, "-m", "evals.orientation", "--batch=2", "--max_turns=3", f"--out={tmp_path / 'y'}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "--batch is now --config.rollout.slots; --max_turns is now --config.agent.max_turns" in proc.stderr, (
    proc.stderr[-2000:]
  )


def test_the_judge_decides_what_the_rule_does_not_match(tmp_path, tok, service):
  """With a judge, answers the rule rejects go to it (here an endpoint that always agrees), as
  in RL scoring; answers the rule accepts are not sent."""
  from codevision_jax.rl.judge import Judge
  from test_rl_judge import FakeEndpoint, serve

  endpoint = FakeEndpoint(reply="Yes.")
  policy = ScriptedPolicy(tok, SCRIPTS, num_slots=2)
  chosen = [c for c in cases() if c.tools == "on"]

  async def go():
    web_runner, url = await serve(endpoint)
    try:
      async with ExecutorClient(service.url) as client, Judge(url, "judge") as judge:
        return await runner.run_cases(
          chosen,
          str(tmp_path),
          policy=policy,
          tokenizer=tok,
          client=client,
          settings=SETTINGS,
          agent=AgentConfig(max_turns=4, max_total_tokens=2000),
          judge=judge,
        )
    finally:
      await web_runner.cleanup()

  stats = asyncio.run(go())
  results = runner.load_results(str(tmp_path))
  assert stats.judged == 1 and endpoint.requests == 1  # Only "nope" against "3/4".
  assert results["ocrbench/1/rotate_90/on"]["correct"]
  assert results["ocrbench/1/rotate_90/on"]["reward"]["r_acc"] == 1.0
