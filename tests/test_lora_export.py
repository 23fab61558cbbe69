"""LoRA exports of a LoRA SFT run from an HF base: `launch.export --merge` writes HF weights equal
to base + scale * A @ B in float32, which transformers loads and runs like our model with its
adapters; `launch.export` (no --merge) writes a PEFT adapter directory that peft loads onto the
HF base, giving our logits."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import peft
import pytest
import safetensors.numpy
import transformers
from flax import nnx

from codevision_jax import models
from codevision_jax.hf.load import load_hf
from codevision_jax.hf.save import save_hf
from codevision_jax.models import lora
from codevision_jax.processing import tokenizer as tok_lib
from codevision_jax.runtime import run_setup
from codevision_jax.train import loop
from configs import tiny_sft
from hf_reference import hf_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = lora.DEFAULT_TARGETS + ("merger", "tower")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 3-step LoRA SFT (rank 4, every target) of a tiny Qwen2.5-VL HF checkpoint."""
  root = tmp_path_factory.mktemp("lora_export")
  tok_dir, base_dir, workdir = str(root / "tok"), str(root / "base"), str(root / "run")
  tok_lib.build_tiny_tokenizer(tok_dir)
  c = tiny_sft.get_config()
  c.model.tokenizer = tok_dir
  mc = run_setup.model_config(c.model, run_setup.load_tokenizer(c.model, workdir))
  save_hf(models.build_model(mc, seed=5), base_dir)
  c.model.path, c.model.preset, c.model.vocab_size = base_dir, "", 0
  c.data.synthetic_size, c.data.buckets, c.data.max_pixels = 8, (512,), 28 * 28 * 4
  c.data.drop_oversized = True
  c.train.steps, c.train.checkpoint_every, c.mesh.num_devices = 3, 3, 1
  c.optim.lr = 1e-2
  c.model.lora = lora.config_section()
  c.model.lora.rank, c.model.lora.alpha, c.model.lora.targets = 4, 8.0, TARGETS
  result = loop.train(c, workdir)
  return workdir, base_dir, result, c


def _export(workdir, out, *flags):
  proc = subprocess.run(
    [sys.executable, "-m", "launch.export", f"--workdir={workdir}", f"--out={out}", *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


def _ours(base_dir, result, c):
  """Our model: the HF base with the run's trained adapters."""
  model = load_hf(base_dir, dtype="float32")
  lora.apply(model, lora.settings(c))
  state = nnx.state(model, lora.adapters_filter())
  nnx.replace_by_pure_dict(state, jax.device_get(result.state["params"]))
  nnx.update(model, state)
  return model


def _inputs(mc):
  rng = np.random.default_rng(0)
  v = mc.vision
  n = 16 // v.spatial_merge_size**2
  ids = np.array(
    [[5, 6, mc.vision_start_token_id] + [mc.image_token_id] * n + [mc.vision_end_token_id, 7, 8, 9]], np.int32
  )
  pixels = rng.standard_normal((16, v.in_channels * v.temporal_patch_size * v.patch_size**2))
  return ids, pixels.astype(np.float32), np.array([[1, 4, 4]])


def _adapters(result):
  """{HF module name: (A [in, r], B [r, out])} of the trained adapters (unscanned paths)."""
  out = {}
  for path, a in jax.tree_util.tree_flatten_with_path(result.state["params"])[0]:
    keys = [p.key for p in path]
    if keys[-1] == "lora_a":
      node = result.state["params"]
      for k in keys[:-1]:
        node = node[k]
      out[".".join(str(k) for k in keys[:-1])] = (np.asarray(a), np.asarray(node["lora_b"]))
  return out


def test_merged_export_is_base_plus_scale_b_a_and_runs_in_transformers(run, tmp_path):
  workdir, base_dir, result, c = run
  out = str(tmp_path / "merged")
  assert f"exported to {out}" in _export(workdir, out, "--merge")
  got = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  base = safetensors.numpy.load_file(os.path.join(base_dir, "model.safetensors"))
  assert got.keys() == base.keys()
  adapters = _adapters(result)
  assert len(adapters) > 20 and any("merger" in k for k in adapters) and any("blocks" in k for k in adapters)
  merged_keys = set()
  for module, (a, b) in adapters.items():
    # Our module path -> the file's key (official Qwen2.5-VL layout, merger.mlp.1 is HF's mlp.2).
    key = (
      module.replace("model.language_model.", "model.")
      .replace("model.visual.", "visual.")
      .replace("merger.mlp.1", "merger.mlp.2")
      + ".weight"
    )
    want = base[key].astype(np.float32) + np.float32(2.0) * (a.astype(np.float32) @ b.astype(np.float32)).T
    np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-6, err_msg=key)
    assert np.abs(got[key] - base[key]).max() > 0, key  # The adapters trained.
    merged_keys.add(key)
  for key in got.keys() - merged_keys:
    np.testing.assert_array_equal(got[key], base[key], err_msg=key)
  hf = transformers.AutoModelForImageTextToText.from_pretrained(out)
  ours = _ours(base_dir, result, c)
  ids, pixels, grid = _inputs(ours.config)
  want = np.asarray(ours(ids, pixels, grid))
  np.testing.assert_allclose(hf_logits(hf, ids, pixel_values=pixels, image_grid_thw=grid), want, atol=1e-4, rtol=0)


def test_peft_adapter_export_loaded_by_peft_gives_our_logits(run, tmp_path):
  workdir, base_dir, result, c = run
  out = str(tmp_path / "adapter")
  assert "peft.PeftModel.from_pretrained" in _export(workdir, out)
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
  with open(os.path.join(out, "adapter_config.json")) as f:
    config = json.load(f)
  assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
  weights = safetensors.numpy.load_file(os.path.join(out, "adapter_model.safetensors"))
  key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
  assert weights[key].shape == (4, 128)  # PEFT's [r, in].
  assert len(weights) == 2 * len(_adapters(result))
  base = transformers.AutoModelForImageTextToText.from_pretrained(base_dir)
  ours = _ours(base_dir, result, c)
  ids, pixels, grid = _inputs(ours.config)
  before = hf_logits(base, ids, pixel_values=pixels, image_grid_thw=grid)
  model = peft.PeftModel.from_pretrained(base, out)
  got = hf_logits(model, ids, pixel_values=pixels, image_grid_thw=grid)
  want = np.asarray(ours(ids, pixels, grid))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert np.abs(before - want).max() > 1e-3  # The adapters change the logits.
