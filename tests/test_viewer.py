"""The HTML report and trajectory viewer (`evals.viewer`, `launch.view`): the page's content and
escaping, and the page run in headless Chromium (its self-test: no errors, every image loads, the
detail opens; a screenshot that is not blank)."""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest
from PIL import Image

from evals import viewer
from launch import view

EVIL = "</script><script>alert(1)</script> <b>bold</b> <!-- x"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
# A console message in Chromium's stderr log (--enable-logging=stderr), e.g.
#   [1130/195841.969322:INFO:CONSOLE:1] "Uncaught Error: boom", source: file:///x.html (1)
# (older builds write CONSOLE(1)). Every console message is logged at INFO, console.error too.
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)?\] \"(.*)\", source: (.*)$")


def _png(path, color, size=(48, 32)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.new("RGB", size, color)
  image.paste((255, 255, 255), (4, 4, size[0] // 2, size[1] // 2))
  image.save(path)


def _call(turn, status="ok", result=None, error=None, ops=("rotate",)):
  return {
    "turn": turn,
    "description": "rotate the image upright",
    "image_index": 0,
    "code": "image = image.rotate(90, expand=True)\nprint(image.size)",
    "status": status,
    "stdout": "(32, 48)\n" if status == "ok" else "",
    "error": error,
    "result_image": result,
    "ops": list(ops),
    "latency_s": 0.0123,
  }


def _reward(correct):
  return {"correct": float(correct), "r_format": 1.0, "r_tool": 0.5, "score": 1.5 * correct}


def trajectories(root) -> list[dict]:
  """Four transcripts (`rl.transcript` format plus the eval's fields) with their PNGs under
  `root/images/`: a correct one with a successful call, one whose call failed, an ungraded one
  without tools, and one whose text tries to break out of the page."""
  for name, color in [
    ("a_0", (200, 40, 40)),
    ("a_1", (40, 200, 40)),
    ("b_0", (40, 40, 200)),
    ("c_0", (120, 120, 0)),
    ("d_0", (0, 120, 120)),
    ("d_1", (90, 0, 90)),
  ]:
    _png(os.path.join(root, "images", f"{name}.png"), color)
  base = {"origin": "synthetic (test)", "finish_reason": "answer", "error": None}
  return [
    {
      **base,
      "id": 0,
      "key": "toy/0/rotate_90/on",
      "suite": "toy",
      "item": "0",
      "transform": "rotate_90",
      "tools": "on",
      "question": "What does the sign say?",
      "ground_truth": "stop",
      "answer": "stop",
      "correct": True,
      "reward": _reward(True),
      "num_turns": 2,
      "turns": [
        {"role": "assistant", "text": "<think>It is sideways.</think>\n<tool_call>..."},
        {"role": "tool", "text": "<image>"},
        {"role": "assistant", "text": "<answer>stop</answer>"},
      ],
      "tool_calls": [_call(1, result="images/a_1.png")],
      "images": ["images/a_0.png", "images/a_1.png"],
    },
    {
      **base,
      "id": 1,
      "key": "toy/1/flip_horizontal/on",
      "suite": "toy",
      "item": "1",
      "transform": "flip_horizontal",
      "tools": "on",
      "question": "How many dots?",
      "ground_truth": ["3", "three"],
      "answer": "4",
      "correct": False,
      "reward": _reward(False),
      "num_turns": 2,
      "turns": [
        {"role": "assistant", "text": "<tool_call>{...}</tool_call>"},
        {"role": "tool", "text": "Error: NameError"},
        {"role": "assistant", "text": "<answer>4</answer>"},
      ],
      "tool_calls": [_call(1, status="code_error", ops=(), error="NameError: name 'img' is not defined")],
      "images": ["images/b_0.png"],
    },
    {
      **base,
      "id": 2,
      "key": "other/2/none/off",
      "suite": "other",
      "item": "2",
      "transform": "none",
      "tools": "off",
      "question": "Describe it.",
      "ground_truth": None,
      "answer": "a square",
      "correct": None,
      "reward": None,
      "num_turns": 1,
      "finish_reason": "eos",
      "turns": [{"role": "assistant", "text": "a square"}],
      "tool_calls": [],
      "images": ["images/c_0.png"],
    },
    {
      **base,
      "id": 3,
      "key": "toy/3/none/on",
      "suite": "toy",
      "item": "3",
      "transform": "none",
      "tools": "on",
      "question": f"Read this: {EVIL}",
      "ground_truth": "x",
      "answer": EVIL,
      "correct": False,
      "reward": _reward(False),
      "num_turns": 2,
      "error": EVIL,
      "turns": [
        {"role": "assistant", "text": EVIL},
        {"role": "tool", "text": "<image>"},
        {"role": "assistant", "text": f"<answer>{EVIL}</answer>"},
      ],
      "tool_calls": [_call(1, result="images/d_1.png", ops=("crop", "rotate"))],
      "images": ["images/d_0.png", "images/d_1.png"],
    },
  ]


TABLES = [
  (
    "Accuracy <by> transform",
    ["transform", "accuracy", "n"],
    [["none", 0.5, 2], ["rotate_90", None, 1], ["<i>evil</i>", 2 / 3, 3]],
  )
]
NOTES = ["rule-only scoring: no judge", "a toy model: a <smoke> test"]


def _render(root, trajs=None, name="report.html"):
  plot = os.path.join(root, "plot.png")
  _png(plot, (10, 10, 10), (64, 40))
  with open(plot, "rb") as f:
    plots = [("a plot", f.read())]
  return viewer.render(
    os.path.join(root, name),
    title="Viewer <test>",
    trajectories=trajectories(root) if trajs is None else trajs,
    tables=TABLES,
    plots=plots,
    notes=NOTES,
  )


def _embedded(text: str) -> list[dict]:
  m = re.search(r'<script type="application/json" id="trajectories">(.*?)</script>', text, re.S)
  assert m, "no trajectories script element"
  return json.loads(m.group(1))


def test_page_content_and_escaping(tmp_path):
  path = _render(str(tmp_path))
  assert path == os.path.join(str(tmp_path), "report.html") and os.path.isfile(path)
  text = open(path, encoding="utf-8").read()
  trajs = trajectories(str(tmp_path))
  assert _embedded(text) == trajs  # the JSON round-trips, every key already set
  # Nothing the model wrote can close the JSON's script element or open a new one.
  assert "</script><script>alert" not in text
  assert text.count("</script>") == 3  # the capture script, the JSON, the viewer
  before, rest = text.split('<script type="application/json" id="trajectories">')
  data, after = rest.split("</script>", 1)
  assert "<\\/script><script>alert(1)<\\/script> <b>bold<\\/b> <\\u0021-- x" in data
  assert "alert" not in before + after and "<b>" not in before + after
  # Notes, tables and the title are escaped text; floats have 3 decimals, None is a dash.
  for note in ("rule-only scoring: no judge", "a toy model: a &lt;smoke&gt; test"):
    assert f"<p>{note}</p>" in text
  assert "<title>Viewer &lt;test&gt;</title>" in text
  assert "<h3>Accuracy &lt;by&gt; transform</h3>" in text
  for cell in (
    '<td class="num">0.500</td>',
    "<td>–</td>",
    '<td class="num">0.667</td>',
    '<td class="num">2</td>',
    "<td>&lt;i&gt;evil&lt;/i&gt;</td>",
  ):
    assert cell in text
  assert '<img src="data:image/png;base64,iVBOR' in text
  assert "images/a_0.png" in text and "base64" not in text.split('id="trajectories">')[1]
  assert "http://" not in text and "https://" not in text  # nothing to fetch


def test_keys_are_unique_and_values_json_safe(tmp_path):
  import numpy as np

  trajs = [
    {"id": 7, "reward": {"score": np.float32(0.5), "nan": float("nan")}},
    {"id": 7, "turns": [], "num_turns": np.int64(3)},
    {"key": "k", "id": 1, "answer": "a lone \ud800 surrogate \\\ud800"},
  ]
  text = open(_render(str(tmp_path), trajs), encoding="utf-8").read()
  got = _embedded(text)
  assert [t["key"] for t in got] == ["7", "7#2", "k"]
  assert got[0]["reward"] == {"score": 0.5, "nan": "nan"} and got[1]["num_turns"] == 3
  assert got[2]["answer"] == trajs[2]["answer"]


# ---- headless Chromium ---------------------------------------------------------------------


def _browser() -> str:
  for name in BROWSERS:
    found = shutil.which(name)
    if found:
      return found
  pytest.fail(
    f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}); the viewer's "
    "browser tests need one: run `make browser-deps` (apt package "
    "chromium-headless-shell)"
  )


def _chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
  profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
  cmd = [
    _browser(),
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--allow-file-access-from-files",
    "--virtual-time-budget=10000",
    "--enable-logging=stderr",
    "--v=0",
    f"--user-data-dir={profile}",
    *args,
    url,
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr[-3000:]}"
  return done


def _console(stderr: str) -> list[str]:
  """The page's console messages in Chromium's log. The page itself writes none, so any one is
  an error (an uncaught exception shows as "Uncaught ..."; console.error, logged at INFO like
  every console message, can only be told apart by the page's own capture)."""
  return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]


def _selftest(tmp_path, path: str) -> tuple[dict, str, list[str]]:
  done = _chromium(tmp_path, f"file://{os.path.abspath(path)}#selftest", "--dump-dom")
  m = re.search(r'<pre id="selftest-result">(.*?)</pre>', done.stdout, re.S)
  assert m, f"the page wrote no self-test result; its console: {_console(done.stderr)}; stderr:\n{done.stderr[-3000:]}"
  return json.loads(html.unescape(m.group(1))), done.stdout, _console(done.stderr)


def test_browser_selftest(tmp_path):
  trajs = trajectories(str(tmp_path))
  trajs = [trajs[3]] + trajs[:3]  # open the one trying to inject markup
  result, dom, console = _selftest(tmp_path, _render(str(tmp_path), trajs))
  assert result["errors"] == [] and console == [], (result["errors"], console)
  # The plot and the opened trajectory's input and result images.
  assert result["images_total"] == 3 and result["images_failed"] == [], result
  assert result["images_loaded"] == result["images_total"]
  assert result["opened"] == "toy/3/none/on"
  assert result["detail_text_length"] > 200
  assert result["filters"] == {
    "suite=other": 1,
    "suite=toy": 3,
    "transform=flip_horizontal": 1,
    "transform=none": 2,
    "transform=rotate_90": 1,
    "tools=off": 1,
    "tools=on": 3,
    "grade=correct": 1,
    "grade=incorrect": 2,
    "grade=ungraded": 1,
    "search=<nothing>": 0,
  }
  # The model's markup stayed text: serialized escaped, no element made of it.
  assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;bold&lt;/b&gt;" in dom
  outside = re.sub(r'(id="trajectories">).*?</script>', r"\1", dom, flags=re.S)
  assert "<script>alert" not in outside and "<b>bold" not in outside


def test_browser_reports_a_broken_image(tmp_path):
  trajs = trajectories(str(tmp_path))
  trajs[1]["images"] = ["images/missing.png"]
  result, _, console = _selftest(tmp_path, _render(str(tmp_path), [trajs[1], trajs[0]]))
  assert result["opened"] == "toy/1/flip_horizontal/on"
  assert result["images_failed"] == ["images/missing.png"], result
  assert result["images_loaded"] == result["images_total"] - 1
  assert result["errors"] == [] and console == []


def test_browser_screenshot(tmp_path):
  path = _render(str(tmp_path))
  key = "toy/0/rotate_90/on"
  shot = tmp_path / "report.png"
  url = f"file://{os.path.abspath(path)}#traj={urllib.parse.quote(key, safe='')}"
  done = _chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,1600")
  assert shot.is_file(), f"no screenshot; stderr:\n{done.stderr[-3000:]}"
  with Image.open(shot) as image:
    assert image.size == (1280, 1600)
    colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
  assert colors is None or len(colors) > 50, "the screenshot is (nearly) one colour"
  assert _console(done.stderr) == []
  if os.environ.get("CVJ_ARTIFACTS"):
    os.makedirs(os.environ["CVJ_ARTIFACTS"], exist_ok=True)
    shutil.copy(shot, os.path.join(os.environ["CVJ_ARTIFACTS"], "viewer.png"))


# ---- launch.view ---------------------------------------------------------------------------


def _write_run(directory, trajs):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "transcripts.jsonl"), "w", encoding="utf-8") as f:
    for t in trajs:
      t = {k: v for k, v in t.items() if k not in ("key", "suite", "item", "transform", "tools")}  # as rl.transcript
      f.write(json.dumps(t) + "\n")


def _image_paths(text: str) -> list[str]:
  return [
    p for t in _embedded(text) for p in t["images"] + [c["result_image"] for c in t["tool_calls"] if c["result_image"]]
  ]


def test_view_of_a_rollout_directory(tmp_path):
  run = tmp_path / "rollout"
  trajs = trajectories(str(run))
  _write_run(str(run), trajs)
  out = view.build(str(run))
  assert out == os.path.join(str(run), "view.html")
  text = open(out, encoding="utf-8").read()
  assert [t["key"] for t in _embedded(text)] == ["0", "1", "2", "3"]
  for p in _image_paths(text):
    assert os.path.isfile(os.path.join(run, p)), p
  assert "<td>all</td><td class=\"num\">4</td>" in text  # trajectories
  assert '<td class="num">0.333</td>' in text  # accuracy over the 3 graded


def test_view_of_rl_rounds(tmp_path):
  workdir = tmp_path / "rl"
  for r in (1, 3):
    run = workdir / "rollouts" / f"round_{r:05d}"
    _write_run(str(run), trajectories(str(run))[: 2 + r // 3])
  out = str(tmp_path / "elsewhere" / "rounds.html")
  done = subprocess.run(
    [sys.executable, "-m", "launch.view", f"--rollouts={workdir}", f"--out={out}"],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert done.returncode == 0, done.stderr
  printed = done.stdout
  assert out in printed and f"file://{out}" in printed and "xdg-open" in printed
  text = open(out, encoding="utf-8").read()
  got = _embedded(text)
  assert [t["key"] for t in got] == [
    "round_00001/0",
    "round_00001/1",
    "round_00003/0",
    "round_00003/1",
    "round_00003/2",
  ]
  assert [t["suite"] for t in got] == ["round_00001"] * 2 + ["round_00003"] * 3
  paths = _image_paths(text)
  assert paths and all(p.startswith("../rl/rollouts/round_0000") for p in paths), paths
  for p in paths:
    assert os.path.isfile(os.path.join(os.path.dirname(out), p)), p
  for row in ("<td>round_00001</td>", "<td>round_00003</td>", "<td>all</td>"):
    assert row in text
  # The same from the rollouts/ directory itself, and the page works in a browser.
  assert view.build(str(workdir / "rollouts")) == str(workdir / "rollouts" / "view.html")
  result, _, console = _selftest(tmp_path, out)
  assert result["errors"] == [] and console == [] and result["images_failed"] == []
  assert result["opened"] == "round_00001/0" and result["filters"]["suite=round_00003"] == 3


def test_view_names_a_directory_without_transcripts(tmp_path):
  (tmp_path / "empty" / "round_00001").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
    view.build(str(tmp_path / "empty"))


def test_view_of_rl_rounds_takes_each_rounds_accuracy_from_its_metrics(tmp_path):
  """The saved trajectories are a sample of a round: the round's accuracy over all its
  trajectories comes from metrics.jsonl, and the sample's columns say they are the sample's."""
  workdir = tmp_path / "rl"
  for r in (1, 2):
    run = workdir / "rollouts" / f"round_{r:05d}"
    _write_run(str(run), trajectories(str(run))[:2])
  with open(workdir / "metrics.jsonl", "w") as f:
    for r, acc in ((1, 0.25), (2, 0.75)):
      f.write(json.dumps({"round": r, "rollout/accuracy": acc, "rollout/reward/score": 1.5}) + "\n")
  text = open(view.build(str(workdir)), encoding="utf-8").read()
  assert "accuracy of the saved sample" in text
  assert "round accuracy (all trajectories, metrics.jsonl)" in text
  assert '<td class="num">0.250</td>' in text and '<td class="num">0.750</td>' in text
  assert "their accuracy is the sample&#x27;s" in text or "their accuracy is the sample's" in text
