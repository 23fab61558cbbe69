"""launch.export: a training run's Orbax checkpoint becomes an HF directory that transformers
loads, holding exactly the trained (and frozen) parameters, cast as asked, with the tokenizer and
a processor config; errors name what is missing."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from codevision_jax.hf import keymap
from codevision_jax.models import abstract_model
from codevision_jax.train import loop
from codevision_jax.runtime import export, run_setup
from configs import tiny_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  c = tiny_sft.get_config()
  c.data.synthetic_size, c.data.buckets, c.data.max_pixels = 8, (512,), 28 * 28 * 4
  c.data.drop_oversized = True  # One short bucket: the few longer records are left out.
  c.train.steps, c.train.checkpoint_every, c.mesh.num_devices = 2, 1, 1
  workdir = str(tmp_path_factory.mktemp("sft"))
  return workdir, loop.train(c, workdir), c


def trained(result, c, workdir) -> dict:
  """transformers' state-dict key -> the trained value (ours mapped to HF's layout)."""
  tok = run_setup.load_tokenizer(c.model, workdir)
  mc = run_setup.model_config(c.model, tok)
  state = nnx.state(abstract_model(mc), nnx.Param)
  values = {**_flat(jax.device_get(result.state["params"])), **_flat(jax.device_get(result.frozen))}
  return {m.hf_key: m.to_hf(values[m.path]) for m in keymap.param_mappings(state, mc)}


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): np.asarray(v)})
  return out


def test_export_loads_in_transformers_with_the_trained_weights(run, tmp_path):
  workdir, result, c = run
  out = str(tmp_path / "hf")
  proc = subprocess.run(
    [sys.executable, "-m", "launch.export", f"--workdir={workdir}", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"exported to {out}" in proc.stdout
  assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(os.listdir(out))
  hf = transformers.AutoModelForImageTextToText.from_pretrained(out)
  got = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  want = trained(result, c, workdir)
  assert set(want) == set(got)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  # The image processor reads the run's settings; the tokenizer is the run's.
  processor = transformers.AutoImageProcessor.from_pretrained(out)
  assert processor.size == {"shortest_edge": c.data.min_pixels, "longest_edge": c.data.max_pixels}
  assert len(transformers.AutoTokenizer.from_pretrained(out)) == len(run_setup.load_tokenizer(c.model, workdir))


def test_export_casts_and_picks_a_step(run, tmp_path):
  workdir, result, c = run
  assert export.checkpoint_steps(workdir) == [1, 2]
  out = export.export_run(workdir, str(tmp_path / "bf16"), dtype="bfloat16", step=2)
  hf = transformers.AutoModelForImageTextToText.from_pretrained(out, dtype=torch.bfloat16)
  assert hf.dtype == torch.bfloat16
  lm_head = trained(result, c, workdir)["lm_head.weight"]
  np.testing.assert_array_equal(
    hf.lm_head.weight.detach().float().numpy(), lm_head.astype(jax.numpy.bfloat16).astype(np.float32)
  )
  with pytest.raises(ValueError, match=r"no checkpoint of step 7; the finished ones are \[1, 2\]"):
    export.export_run(workdir, str(tmp_path / "x"), step=7)
  with pytest.raises(FileNotFoundError, match="no checkpoints directory"):
    export.export_run(str(tmp_path), str(tmp_path / "y"))
