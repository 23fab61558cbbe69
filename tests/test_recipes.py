"""The real recipes (Qwen2.5-VL-7B and Qwen3-VL-8B, SFT and GRPO) before any GPU is rented: their
dry runs on 8 faked devices fit 8 x 141 GB with their own settings (exact shard sizes where shapes
decide), a run that does not fit is refused naming its largest part, and each recipe's own smoke
test (the command in its docstring, the tiny model swapped in) runs a step or a round on 8 CPU
devices."""

import importlib
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codevision_jax import parallel
from codevision_jax.models import presets
from codevision_jax.runtime import dry_run
from multiprocess_util import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {  # recipe -> (kind, the published shapes' preset)
  "qwen2_5_vl_7b_sft": ("sft", "qwen2_5_vl_7b"),
  "qwen2_5_vl_7b_rl": ("rl", "qwen2_5_vl_7b"),
  "qwen3_vl_8b_sft": ("sft", "qwen3_vl_8b"),
  "qwen3_vl_8b_rl": ("rl", "qwen3_vl_8b"),
}
H200 = 141e9


def recipe(name):
  return importlib.import_module(f"configs.{name}")


def _plan(name, **overrides):
  kind, preset = RECIPES[name]
  c = recipe(name).get_config()
  c.model.preset = preset
  for key, value in overrides.items():
    section, field = key.split("__")
    c[section][field] = value
  mesh = parallel.make_mesh(c.mesh.shape.to_dict(), devices=jax.devices()[:8])
  return c, dry_run.plan(c, kind=kind, platform="gpu", device_memory=H200, mesh=mesh)


def _lm_params(mc):
  """Parameters of the decoder and LM head (what trains: the tower and merger are frozen)."""
  t = mc.text
  h, i, d = t.hidden_size, t.intermediate_size, t.resolved_head_dim
  attn = h * d * (t.num_attention_heads * 2 + t.num_key_value_heads * 2)
  if t.attention_bias:
    attn += d * (t.num_attention_heads + 2 * t.num_key_value_heads)
  if t.qk_norm:
    attn += 2 * d
  layer = attn + 3 * h * i + 2 * h
  head = 0 if mc.tie_word_embeddings else t.vocab_size * h
  return t.num_hidden_layers * layer + t.vocab_size * h + head + h


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_real_recipes_fit_eight_h200s(name):
  c, plan = _plan(name)
  print(plan.table())
  assert plan.fits, plan.table()
  plan.check()
  mc = presets.preset(RECIPES[name][1])
  parts = {p: {x.name: x for x in parts} for p, parts in plan.phases.items()}
  first = next(iter(parts.values()))
  # Exact where shapes decide: float32 master weights over 8 devices (fsdp), Adam's two moments.
  assert first["parameters"].bytes == pytest.approx(_lm_params(mc) * 4 / 8, rel=1e-3)
  assert first["optimizer state"].bytes == pytest.approx(2 * first["parameters"].bytes, rel=1e-3)
  if RECIPES[name][0] == "rl":
    assert set(parts) == {"rollout", "learn", "hand-off"}
    kv = parts["rollout"]["KV cache"]
    t = mc.text
    length = c.agent.max_total_tokens + c.rollout.chunk + 1
    # bfloat16, sharded over the 8 devices: slots 64 / 8 per device.
    want = (c.rollout.slots / 8) * length * t.num_hidden_layers * 2 * t.num_key_value_heads * t.resolved_head_dim * 2
    assert kv.bytes == pytest.approx(want, rel=1e-6)
    assert parts["rollout"]["sampler weights"].bytes == pytest.approx(
      first["parameters"].bytes / 2, rel=1e-3
    )  # bfloat16
    # Phases hold only what they use: no KV cache or sampler weights while learning.
    assert "KV cache" not in parts["learn"] and "sampler weights" not in parts["learn"]
    assert "gradients" not in parts["rollout"]


def test_a_run_that_does_not_fit_is_refused_naming_its_largest_part():
  # 64 slots x 128k tokens: the KV cache alone is 30 GB per device of the 8.
  _, plan = _plan("qwen3_vl_8b_rl", agent__max_total_tokens=131072, train__buckets=(131072,))
  assert not plan.fits
  with pytest.raises(
    dry_run.DoesNotFit,
    match=r"rollout phase needs .* the largest part is KV "
    r"cache .* Lower rollout\.slots or agent\.max_total",
  ):
    plan.check()


def test_launcher_dry_runs_print_the_table_and_exit_with_the_verdict():
  base = [
    sys.executable,
    "-m",
    "launch.rl",
    "--config=configs/qwen2_5_vl_7b_rl.py",
    "--config.model.preset=qwen2_5_vl_7b",
    "--dry_run",
    "--dry_run_devices=8",
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  ok = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "rl dry run: mesh {'data': 1, 'fsdp': 8, 'tensor': 1} (8 devices), target gpu" in ok.stdout
  assert "KV cache" in ok.stdout and "== dry run: fits" in ok.stdout
  assert "Traceback" not in ok.stderr
  small = subprocess.run(
    base + ["--device_memory_gb=24"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert small.returncode == 1
  assert "does not fit" in small.stdout and "the largest part is" in small.stdout


def test_the_sft_dry_run_on_its_own_platform_reads_xla_figures():
  """On the present platform the SFT step is compiled from abstract arguments and XLA's
  temporaries replace the estimate. What they add from 1024 to 2048 tokens is the growth of the
  attention scores, which the estimate for other targets models (xla attention)."""
  c = recipe("qwen2_5_vl_7b_sft").get_config()
  c.model.preset, c.model.vocab_size = "qwen2_5_vl_tiny", 512
  c.train.grad_accum = 1
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  temps, estimates = {}, {}
  for bucket in (1024, 2048):
    c.data.buckets = (bucket,)
    plan = dry_run.plan(c, kind="sft", mesh=mesh)
    parts = {p.name: p for p in plan.phases["step"]}
    assert not parts["step temporaries"].estimate and "compiled" in plan.table()
    temps[bucket] = parts["step temporaries"].bytes
    estimates[bucket] = dry_run.activation_bytes(
      presets.preset("qwen2_5_vl_tiny"),
      rows=8,
      length=bucket,
      remat="full",
      backend="xla",
      compute_dtype=jnp.bfloat16,
      loss_chunk=2048,
      patches=c.data.patch_budget,
      train_vision=False,
    )[0]
  xla, estimate = temps[2048] - temps[1024], estimates[2048] - estimates[1024]
  assert 0.7 < estimate / xla < 1.3, (temps, estimates)


def _smoke_command(name, workdir):
  """The smoke-test command of a recipe's docstring, with its workdir replaced."""
  doc = recipe(name).__doc__
  block = doc[doc.index("Smoke test") :]
  lines = block[block.index("python -m launch.") :].split("\n")
  command = []
  for line in lines:
    command.append(line.strip().rstrip("\\").strip())
    if not line.rstrip().endswith("\\"):
      break
  args = " ".join(command).split()
  assert args[:2] == ["python", "-m"]
  return [sys.executable] + [re.sub(r"^--workdir=.*", f"--workdir={workdir}", a) for a in args[1:]]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_recipe_smoke_test_runs_on_eight_cpu_devices(name, tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
  out = subprocess.run(_smoke_command(name, workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert "8 x cpu on the mesh" in out.stderr
  assert os.listdir(workdir / "checkpoints")
  if RECIPES[name][0] == "rl":
    with open(workdir / "metrics.jsonl") as f:
      m = json.loads(f.readline())
    assert m["batch/trained_trajectories"] == 8 and m["actor/policy_tokens"] > 0
    assert np.isfinite(m["actor/grad_norm"])
  else:
    assert "last logged step 1: loss" in out.stdout
