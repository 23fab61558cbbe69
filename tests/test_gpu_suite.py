"""`python -m benchmarks.gpu_suite --tiny` runs every row of the accelerator suite on CPU and
writes them all to JSON: a number above 0, or the reason the row was skipped (no timing
assertions: performance is read from the table, not tested)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = (
  "matmul ceiling",
  "copy ceiling",
  "sft xla/full",
  "sft xla/dots",
  "sft cudnn/full",
  "sft cudnn/dots",
  "sft auto/full",
  "decode Sampler.generate",
  "decode slot engine",
  "torch sft",
  "torch generate",
)


def test_tiny_suite_writes_every_row(tmp_path):
  out = tmp_path / "suite.json"
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.gpu_suite", "--tiny", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["tiny"] and result["attention_auto"] == "xla"
  rows = {}
  for name in ROWS:
    match = [r for r in result["rows"] if r["name"].startswith(name)]
    assert len(match) == 1, (name, [r["name"] for r in result["rows"]])
    rows[name] = r = match[0]
    assert r.get("skipped") or r["value"] > 0, r
  # On CPU: the XLA rows run, cuDNN's say why not, and "auto" is the XLA measurement.
  for name in ("sft xla/full", "sft xla/dots", "decode Sampler.generate", "matmul ceiling"):
    assert not rows[name].get("skipped") and rows[name]["value"] > 0, rows[name]
  assert rows["sft xla/full"]["tflops"] > 0
  assert "needs NVIDIA GPUs" in rows["sft cudnn/full"]["skipped"]
  assert rows["sft auto/full"]["value"] == rows["sft xla/full"]["value"]
  assert "sft xla/full" in proc.stdout and "ratio" in proc.stdout  # The table.
