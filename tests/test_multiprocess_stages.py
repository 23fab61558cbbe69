"""Several processes (tests/multiprocess_stages.py, 2 processes of 4 CPU devices on 127.0.0.1):
a mesh that cannot run on them is refused by every process before any work, naming the mesh
fields to change; the tiny RL recipe's SFT stage runs with two devices of each process; when one
process fails, the other stops at once and prints which process failed and its message
(codevision_jax/distributed_env.py), whichever of them hosts the coordination service."""

import json

import pytest

from multiprocess_util import spawn


def test_a_mesh_that_does_not_split_per_process_is_refused_before_any_work(tmp_path):
  logs = spawn("multiprocess_stages.py", 2, ["bad_mesh", tmp_path / "w"], expect=3, timeout=300)
  for log in logs:
    assert (
      "REFUSED mesh.shape {'data': 3, 'fsdp': 2, 'tensor': 1} (mesh.num_devices=3: 6 "
      "device(s) of 8) cannot run on 2 processes"
    ) in log, log[-2000:]
    assert "--config.mesh.shape.data=2" in log
    assert "WROTE []" in log  # Nothing built: no tokenizer, no size cache, no checkpoint.


def test_the_tiny_recipes_one_device_mesh_is_refused_naming_the_field(tmp_path):
  logs = spawn("multiprocess_stages.py", 2, ["sft", tmp_path / "w"], expect=3, timeout=300)
  for log in logs:
    assert "REFUSED mesh.num_devices=1 puts one CPU device of each of the 2 processes" in log
    assert "--config.mesh.num_devices=2" in log and "WROTE []" in log


def test_the_tiny_recipes_sft_runs_on_two_processes_with_two_devices_each(tmp_path):
  logs = spawn("multiprocess_stages.py", 2, ["sft2", tmp_path / "w"], timeout=600)
  losses = json.loads(logs[0].split("LOSSES ", 1)[1].splitlines()[0])
  assert len(losses) == 2 and losses[1] < losses[0]
  assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == ["2"]


@pytest.mark.parametrize("mode,failing,other", [("fail", 1, 0), ("fail0", 0, 1)])
def test_when_one_process_fails_the_other_stops_and_says_which_and_why(tmp_path, mode, failing, other):
  logs = spawn("multiprocess_stages.py", 2, [mode, tmp_path / "w"], expect=1, timeout=120)
  message = f"RuntimeError: the data file /data/shard-{failing}.parquet is cut short"
  assert message in logs[failing]
  assert f"process {failing} of 2 failed: {message}" in logs[other], logs[other][-3000:]
  assert f"stopping process {other} as well" in logs[other]
  assert "left the barrier" not in logs[other]
