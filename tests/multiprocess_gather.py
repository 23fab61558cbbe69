"""One process of test_multiprocess_rl.test_gathering_sends_nothing_through_devices: gathers
trajectory-sized objects with image bytes while every way onto a device raises."""

import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multiprocess_util  # noqa: E402

PROCESS_ID, NUM_PROCESSES, (OUT,) = multiprocess_util.join(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from codevision_jax.rl import replicas  # noqa: E402


def refuse(*args, **kwargs):
  raise AssertionError("allgather_objects put data on a device")


for module, name in (
  (jax, "device_put"),
  (jax, "make_array_from_callback"),
  (jax, "make_array_from_process_local_data"),
  (multihost_utils, "process_allgather"),
  (multihost_utils, "broadcast_one_to_all"),
):
  setattr(module, name, refuse)

before = len(jax.live_arrays())
rng = np.random.default_rng(PROCESS_ID)
mine = {
  "process": PROCESS_ID,
  "png": rng.bytes((40 << 20) + 123 * PROCESS_ID),  # > one chunk
  "tokens": rng.integers(0, 100, 1000),
}
seen = [replicas.allgather_objects(mine), replicas.allgather_objects(PROCESS_ID)]
assert len(jax.live_arrays()) == before
if PROCESS_ID == 0:
  with open(OUT, "wb") as f:
    pickle.dump(seen, f)
