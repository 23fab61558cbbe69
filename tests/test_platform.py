"""Runs say what they run on, and settings the devices cannot honour fail at start with the field
and the fix."""

import os
import subprocess
import sys

import pytest

from codevision_jax.runtime import run_setup
from configs import tiny_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_describe_names_platform_devices_mesh_and_backend():
  c = tiny_sft.get_config()
  c.mesh.shape.update({"data": 2, "fsdp": 2, "tensor": 2})
  line = run_setup.describe(run_setup.make_mesh(c.mesh), c.model)
  assert line.startswith("cpu platform, 8 x cpu on the mesh (8 device(s) present, 1 process(es))")
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in line and "attention backend xla" in line


def test_cudnn_without_an_nvidia_gpu_fails_at_start(tmp_path):
  c = tiny_sft.get_config()
  c.model.attention_backend = "cudnn"
  with pytest.raises(
    ValueError,
    match=r"model.attention_backend is 'cudnn', which needs NVIDIA "
    r"GPUs, but the devices are cpu .*--config.model.attention_backend=auto",
  ):
    run_setup.model_parts(c, str(tmp_path))


def test_splash_off_tpu_fails_at_start_unless_interpreted(tmp_path, monkeypatch):
  c = tiny_sft.get_config()
  c.model.attention_backend = "splash"
  monkeypatch.delenv("CVJ_SPLASH_INTERPRET", raising=False)
  with pytest.raises(
    ValueError,
    match=r"model.attention_backend is 'splash', the TPU Pallas "
    r"kernel, but the devices are cpu .*CVJ_SPLASH_INTERPRET=1",
  ):
    run_setup.model_parts(c, str(tmp_path))
  monkeypatch.setenv("CVJ_SPLASH_INTERPRET", "1")
  run_setup.check_platform(c.model)


def test_an_unknown_backend_fails_at_start_naming_the_field(tmp_path):
  c = tiny_sft.get_config()
  c.model.attention_backend = "flash"
  with pytest.raises(ValueError, match=r"model.attention_backend 'flash' is not one of"):
    run_setup.model_parts(c, str(tmp_path))


def test_a_platform_the_host_lacks_fails_at_start_with_the_fix(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "launch.sft", "--config=configs/tiny_sft.py", f"--workdir={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cuda"},
    timeout=300,
  )
  assert proc.returncode != 0
  assert "JAX_PLATFORMS='cuda' asks for a platform this host lacks: unset it" in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
