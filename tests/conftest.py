"""Test-wide settings: 8 simulated CPU devices for sharding tests, float32 matmuls for parity."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One persistent compilation cache for the session, shared by pytest-xdist workers and by every
# subprocess a test starts (launchers, multi-process runs), so a program the suite compiled once
# (the tiny model's steps, the sampler) is not compiled again. The first process to load this file
# (the controller) makes it and removes it at exit; a cache already set (CI, a developer) is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache = tempfile.mkdtemp(prefix="cvj-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory):
  """The tiny RL recipe's short SFT (arrow signs, upright or upside down), trained once per test
  session for the RL tests that start from it."""
  from codevision_jax.train import loop as sft_loop
  from configs import tiny_rl

  path = str(tmp_path_factory.mktemp("sft"))
  sft_loop.train(tiny_rl.get_config().sft, path)
  return path
