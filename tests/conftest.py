"""Test-wide settings: 8 simulated CPU devices for sharding tests, float32 matmuls for parity."""

import os

from multiprocess_util import xla_flags

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
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

from codevision_jax.runtime import host_malloc  # noqa: E402

host_malloc.one_arena()  # Before JAX starts its threads.

# The files that take minutes, longest first: collected first, they start first, so that the two
# pytest-xdist workers finish together (with `--no-loadscope-reorder`, as the Makefile runs it,
# the workers take files in collection order; xdist's default order, most tests first, left the
# long end-to-end files for last). The first needs the session's SFT run (`sft_dir`) and the
# second does not, so one worker trains it while the other runs the two-process SFT tests.
SLOW_FIRST = (
  "test_rl_loop.py",
  "test_multiprocess.py",
  "test_multiprocess_rl.py",
  "test_recipes.py",
  "test_lora_rl.py",
  "test_preemption.py",
  "test_scan_layers.py",
  "test_slot_append.py",
  "test_qwen3_vl.py",
  "test_lora.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: the rest keep their order.


@pytest.fixture(scope="session", autouse=True)
def _started_processes_keep_their_heap():
  """Every process a test starts (launchers, multi-process runs, the executor service) runs under
  `runtime.host_malloc.TUNABLES`: XLA's step buffers stay in its heap instead of being mapped and
  faulted in again every step. The processes that run tests (pytest-xdist's workers, or a run
  without them) started before this; they keep their heap one test file at a time (below)."""
  os.environ.update(host_malloc.environ(os.environ))


@pytest.fixture(scope="module", autouse=True)
def _file_keeps_its_heap():
  """The process running a test file keeps XLA's buffers in its heap while it does, and gives
  the free memory back at the file's end (`runtime.host_malloc.kept`)."""
  with host_malloc.kept():
    yield


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory):
  """The tiny RL recipe's short SFT (arrow signs, upright or upside down), trained once per test
  session for the RL tests that start from it: the first pytest-xdist worker to ask trains it
  under a lock in the directory the workers share, the others wait for it and read it."""
  import fcntl

  from codevision_jax.train import loop as sft_loop
  from configs import tiny_rl

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # Shared by the workers of this session.
  path, done = root / "sft_tiny_rl", root / "sft_tiny_rl.done"
  with open(root / "sft_tiny_rl.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      with host_malloc.kept():  # Set up before the file's own `kept`, a session fixture.
        sft_loop.train(tiny_rl.get_config().sft, str(path))
      done.touch()
  return str(path)
