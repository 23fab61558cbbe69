"""SFT training: sharded training equals one-device training; the loss goes down."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np

from configs import tiny_sft
from codevision_jax.data import pipeline
from codevision_jax.train import loop


def small_config(**mesh_shape):
  """The tiny recipe at test size: one 512-token bucket (one compile), tiny images."""
  c = tiny_sft.get_config()
  c.data.synthetic_size = 48
  c.data.buckets = (512,)
  c.data.drop_oversized = True  # One short bucket: the few longer records are left out.
  c.data.batch_size = 4
  c.data.patch_budget = 64
  c.data.max_pixels = 28 * 28 * 4
  c.train.log_every = 1
  c.train.checkpoint_every = 0
  c.train.async_checkpoints = False
  if mesh_shape:
    c.mesh.shape.update(mesh_shape)
  return c


def test_sharded_training_matches_one_device(tmp_path):
  one = small_config(data=1, fsdp=1, tensor=1)
  one.mesh.num_devices = 1
  one.train.steps = 3
  sharded = small_config(data=2, fsdp=2, tensor=2)
  sharded.train.steps = 3
  # Adam's update lr * m / (sqrt(v) + eps) turns a gradient difference d into up to d * lr / eps
  # when a gradient is ~0 (an output-embedding entry of an unseen token): with eps 1e-8, float32
  # reordering noise of 1e-10 becomes 1e-5. eps 1e-6 keeps the comparison well conditioned.
  one.optim.eps = sharded.optim.eps = 1e-6
  a = loop.train(one, str(tmp_path / "one"))
  b = loop.train(sharded, str(tmp_path / "sharded"))
  assert [h["batch_hash"] for h in a.history] == [h["batch_hash"] for h in b.history]
  np.testing.assert_allclose([h["loss"] for h in a.history], [h["loss"] for h in b.history], rtol=1e-5)
  pa, pb = jax.device_get(a.state["params"]), jax.device_get(b.state["params"])
  assert len(b.state["params"]["model"]["language_model"]["layers"]) == 4
  kernel = b.state["params"]["model"]["language_model"]["layers"][0]["mlp"]["gate_proj"]["kernel"]
  assert len(kernel.sharding.device_set) == 8
  # Float32 tolerance: sharded reductions sum in another order (measured max 7e-7; updates ~1e-3).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=5e-6), pa, pb)
  # Frozen vision tower: not trained, not in the optimizer.
  assert "visual" not in a.state["params"]["model"]


def test_loss_decreases_on_synthetic_data(tmp_path):
  c = small_config(data=1, fsdp=1, tensor=1)
  c.mesh.num_devices = 1
  c.train.steps = 24
  c.optim.lr = 3e-3
  losses = [h["loss"] for h in loop.train(c, str(tmp_path)).history]
  assert len(losses) == 24
  assert np.mean(losses[-4:]) < np.mean(losses[:2]) - 1.0, losses  # From ln(512) ~ 6.2 to ~4.4.


def test_gradient_accumulation_is_the_token_mean(tmp_path):
  """Two microbatches of 2 rows give the update of one microbatch of the same 4 rows (the loss
  is the mean over all loss tokens of the step, and padding never changes it)."""
  c = small_config(data=1, fsdp=1, tensor=1)
  c.mesh.num_devices = 1
  c.train.steps = 1
  run = loop.build(c, str(tmp_path))
  sizes = run.plan.sizes
  rows = np.flatnonzero((sizes[:, 0] <= 512) & (sizes[:, 1] <= 32))[:4].tolist()
  b = run.builder

  def batch(**spec):
    builder = pipeline.BatchBuilder(
      b.source, b.tokenizer, b.settings, dataclasses.replace(b.spec, **spec), run.model_config
    )
    groups = [rows] if spec["grad_accum"] == 1 else [rows[:2], rows[2:]]
    out = builder((512, groups))
    out.pop("image_grid_thw")
    return out

  step = jax.jit(run.step_fn)
  one, m1 = step(run.state, run.frozen, batch(batch_size=4, patch_budget=128, grad_accum=1))
  two, m2 = step(run.state, run.frozen, batch(batch_size=2, patch_budget=64, grad_accum=2))
  assert float(m1["loss_tokens"]) == float(m2["loss_tokens"]) > 0
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
    jax.device_get(one["params"]),
    jax.device_get(two["params"]),
  )


def test_launch_sft_runs_from_the_command_line(tmp_path):
  """The README's command with overrides: it trains, checkpoints, and a rerun resumes (no steps)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = [
    "--config.data.synthetic_size=8",
    "--config.data.buckets=(512,)",
    "--config.train.steps=2",
    "--config.data.drop_oversized=True",
    "--config.data.max_pixels=3136",
    "--config.mesh.num_devices=1",
    "--config.train.checkpoint_every=2",
  ]
  cmd = [sys.executable, "-m", "launch.sft", "--config=configs/tiny_sft.py", f"--workdir={tmp_path}", *flags]
  outputs, logs = [], []
  for extra in ([], ["--orbax_logs"]):
    proc = subprocess.run(cmd + extra, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs.append(proc.stdout)
    logs.append(proc.stderr)
  # Orbax's INFO lines stay out of the console unless asked for; its warnings would still show.
  assert "CheckpointManager init" not in logs[0] and "CheckpointManager init" in logs[1]
  assert "cpu platform" in logs[0] and "libtpu" not in logs[0]  # ours show, JAX's probing does not
  # The run ends with what it wrote where and the next commands.
  assert "last logged step 2: loss" in outputs[0] and "tokens/s" in outputs[0]
  assert f"tensorboard --logdir {tmp_path}/tensorboard" in outputs[0]
  assert f"python -m launch.export --workdir={tmp_path} --out={tmp_path}/hf" in outputs[0]
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  assert "resumed from" in proc.stderr
