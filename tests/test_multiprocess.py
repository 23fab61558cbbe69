"""SFT with two JAX processes on this machine (`jax.distributed.initialize`, coordinator on
127.0.0.1, gloo collectives, 4 simulated CPU devices each) on a (data 2, fsdp 2, tensor 2) mesh
over all 8 devices, against the same run in one process with 8 devices: the same parameters
within float32 tolerance, each process reading only its own rows; checkpoints restore across
process counts; a 2-process run SIGKILLed after a checkpoint resumes exactly. The processes are
`tests/multiprocess_sft.py`."""

import json
import os
import shutil

import numpy as np
import pytest

from multiprocess_util import spawn


def run(processes: int, workdir, steps: int, out, kill_at: int | None = None) -> dict:
  """Runs the SFT (tests/multiprocess_sft.py) on `processes` processes; returns process 0's
  output (parameters, the steps it trained, every process's batch fingerprints), or the return
  codes when killed."""
  args = [workdir, steps, out] + ([kill_at] if kill_at else [])
  spawn("multiprocess_sft.py", processes, args, expect=-9 if kill_at else 0, timeout=600)
  if kill_at:
    return {"codes": [-9] * processes}
  with open(str(out) + ".json") as f:
    info = json.load(f)
  return {"params": dict(np.load(out)), **info}


def assert_close(a: dict, b: dict):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=2e-5, err_msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mp")
  one = run(1, tmp / "one", 4, tmp / "one.npz")
  two = run(2, tmp / "two", 4, tmp / "two.npz")
  return tmp, one, two


def test_two_processes_train_as_one(runs):
  _, one, two = runs
  assert one["steps"] == two["steps"] == [1, 2, 3, 4]
  assert_close(one["params"], two["params"])
  # Each process built only its own rows: its batches differ from the other's every step.
  host0, host1 = two["fingerprints"]
  assert all(a != b for a, b in zip(host0, host1))
  assert len(one["fingerprints"]) == 1


def _from_step_3(src, dst):
  """A copy of a workdir whose newest checkpoint is step 3."""
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, "checkpoints", "4"))
  assert sorted(os.listdir(os.path.join(dst, "checkpoints"))) == ["3"]
  return dst


def test_checkpoints_restore_across_process_counts(runs):
  tmp, one, two = runs
  # The 2-process checkpoint of step 3 resumed by one process, and the other way round.
  by_one = run(1, _from_step_3(tmp / "two", tmp / "two_then_one"), 4, tmp / "a.npz")
  by_two = run(2, _from_step_3(tmp / "one", tmp / "one_then_two"), 4, tmp / "b.npz")
  assert by_one["steps"] == by_two["steps"] == [4]
  assert_close(by_one["params"], two["params"])
  assert_close(by_two["params"], one["params"])


def test_two_processes_killed_and_restarted_resume_exactly(runs):
  tmp, _, two = runs
  workdir = tmp / "killed"
  run(2, workdir, 4, tmp / "k.npz", kill_at=3)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
  resumed = run(2, workdir, 4, tmp / "k.npz")
  assert resumed["steps"] == [4]
  for k, v in two["params"].items():
    np.testing.assert_array_equal(resumed["params"][k], v, err_msg=k)


def test_export_of_a_two_process_checkpoint_on_one_cpu_host(runs, tmp_path):
  """launch.export's code reads the 2-process run's checkpoint in this single process (8
  simulated devices, no distributed runtime): the HF model it writes holds the trained values."""
  import jax
  from flax import nnx

  import codevision_jax as cvj
  from codevision_jax.runtime import export

  tmp, _, two = runs
  out = export.export_run(str(tmp / "two"), str(tmp_path / "hf"))
  loaded = nnx.to_pure_dict(nnx.state(cvj.load_hf(out, dtype="float32"), nnx.Param))
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(loaded)[0]
  }
  assert set(two["params"]) <= set(flat)
  for k, v in two["params"].items():
    np.testing.assert_array_equal(flat[k], v, err_msg=k)


def test_load_hf_on_two_processes_reads_each_share_once(tmp_path):
  """load_hf onto a mesh that shards the parameters across two processes: each process reads
  from the files exactly the bytes its devices hold (about half the checkpoint; the norms and
  biases that every device holds, twice), and the loaded model is the checkpoint."""
  import codevision_jax as cvj
  from codevision_jax import models
  from codevision_jax.models import presets

  hf_dir = str(tmp_path / "hf")
  cvj.save_hf(
    models.build_model(presets.preset("qwen2_5_vl_tiny"), seed=0), hf_dir, max_shard_size="200KB"
  )  # Many files, tensors of one layer spread over several.
  out = str(tmp_path / "load.json")
  spawn("multiprocess_load.py", 2, [hf_dir, out], timeout=600)
  with open(out) as f:
    info = json.load(f)
  assert info["equal"]
  assert info["read"] == info["held"]
  for read in info["read"]:
    assert 0.45 * info["total"] < read < 0.6 * info["total"], info
