"""Test-wide settings: 8 simulated CPU devices for sharding tests, float32 matmuls for parity."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
