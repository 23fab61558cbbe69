"""launch.write_data writes the synthetic tasks in both formats, and the readers read them back
with everything the reward needs."""

import os
import subprocess
import sys

from codevision_jax.data import readers, synthetic, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rl_parquet_round_trip(tmp_path):
  tasks = synthetic.generate(6, seed=2)
  path = str(tmp_path / "rl.parquet")
  assert writers.write_rl_parquet(tasks, path) == 6
  back = readers.read_rl_records(path)
  for task, rec in zip(tasks, back):
    assert rec.ground_truth == task.ground_truth and rec.question == task.question
    assert rec.required_transforms == task.required_transforms
    assert rec.target_box == [float(v) for v in task.target_box]
    assert [m["role"] for m in rec.messages] == ["system", "user"]  # The prompt only.
    assert len(rec.images) == 1 and rec.images[0] == task.images[0]  # PNG bytes as written.


def test_write_data_command(tmp_path):
  for kind, name in (("sft", "sft.jsonl"), ("rl", "rl.parquet")):
    out = tmp_path / name
    proc = subprocess.run(
      [
        sys.executable,
        "-m",
        "launch.write_data",
        f"--kind={kind}",
        "--num=3",
        "--kinds=arrow",
        "--transforms=rotate_90",
        "--p_small=0",
        f"--out={out}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote 3 {kind} records to {out}" in proc.stdout
  sft = readers.read_sft_records(str(tmp_path / "sft.jsonl"))
  assert len(sft) == 3 and all(r.required_transforms == ["rotate_90"] for r in sft)
  assert all(os.path.exists(p) for r in sft for p in r.images)
  assert len(readers.read_rl_records(str(tmp_path / "rl.parquet"))) == 3
