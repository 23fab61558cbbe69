"""LoRA runs across devices and kills: a QLoRA (int8 base) SFT run killed after step 3 and
resumed equals the straight run bit for bit (adapters, optimizer state, the frozen int8 base),
and the same LoRA run on 8 devices (FSDP x tensor) equals it on 1."""

import os
import subprocess
import sys

import jax
import numpy as np

from codevision_jax.train import loop
from test_lora import config
from test_train_resume import assert_resumed_equals_straight, killed_after_step_3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def qlora_config():
  c = config(base_dtype="int8")
  c.train.steps, c.train.checkpoint_every = 6, 3
  return c


KILLED_AFTER_STEP_3 = killed_after_step_3("test_lora_resume", "qlora_config")


def test_a_killed_qlora_run_resumes_bit_exactly(tmp_path):
  straight = loop.train(qlora_config(), str(tmp_path / "straight"))
  kernels = [
    x
    for p, x in jax.tree_util.tree_flatten_with_path(straight.frozen)[0]
    if p[-1].key == "kernel" and "language_model" in jax.tree_util.keystr(p)
  ]
  assert kernels and all(x.dtype == np.int8 for x in kernels)  # The QLoRA base.
  workdir = str(tmp_path / "resumed")
  proc = subprocess.run(
    [sys.executable, "-c", KILLED_AFTER_STEP_3, workdir],
    cwd=ROOT,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == -9, proc.stderr[-3000:]
  resumed = loop.train(qlora_config(), workdir)
  assert [h["step"] for h in resumed.history] == [4, 5, 6]
  assert_resumed_equals_straight(resumed, straight, done=3)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.frozen), jax.device_get(resumed.frozen))


def _trained(n, fsdp, tensor, workdir):
  """Losses and trained parameters (by path) of the LoRA run on a mesh of n = fsdp x tensor of the
  session's 8 CPU devices."""
  c = config()
  c.train.steps = 4
  c.mesh.num_devices, c.mesh.shape.fsdp, c.mesh.shape.tensor = n, fsdp, tensor
  r = loop.train(c, workdir)
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(r.state["params"]))[0]
  return {
    "losses": np.array([h["loss"] for h in r.history]),
    **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat},
  }


def test_eight_devices_equal_one(tmp_path):
  out = {n: _trained(n, fsdp, tensor, str(tmp_path / f"run{n}")) for n, fsdp, tensor in ((1, 1, 1), (8, 4, 2))}
  assert out[1].keys() == out[8].keys()
  np.testing.assert_allclose(out[8]["losses"], out[1]["losses"], rtol=1e-5)
  # Adam's steps are ~lr = 1e-2 per element; the shards' other summation order moves them by
  # less than 1e-4 (an element whose gradient is near zero takes a step of another size).
  for k in out[1]:
    if k != "losses":
      np.testing.assert_allclose(out[8][k], out[1][k], atol=1e-4, rtol=0, err_msg=k)
  moved = max(np.abs(out[1][k]).max() for k in out[1] if "lora_b" in k)
  assert moved > 1e-2  # B left zero: the comparison is of trained adapters.
