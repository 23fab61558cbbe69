"""One process of the multi-process stage tests (tests/test_multiprocess_stages.py).

    python tests/multiprocess_stages.py PROCESS_ID NUM_PROCESSES PORT MODE WORKDIR

MODE:
  sft        the tiny RL recipe's SFT stage as it is (mesh.num_devices=1: one CPU device of each
             process): refused before any work, naming the field
  sft2       that SFT with --config.sft.mesh.num_devices=2 (two devices of each process), 2 steps
             and a checkpoint; process 0 prints the loss of each step
  bad_mesh   SFT with a mesh that does not split into one block per process (3 x 2 over 3
             devices of each process): refused before any work
  fail       process 1 raises; process 0 waits in a barrier it never leaves
  fail0      the same with the roles swapped: the process hosting the coordination service fails
"""

import json
import os
import sys

import multiprocess_util

PROCESS_ID, NUM_PROCESSES, (MODE, WORKDIR) = multiprocess_util.join(sys.argv)

import jax  # noqa: E402

from codevision_jax import distributed_env  # noqa: E402
from codevision_jax.train import loop  # noqa: E402
from configs import tiny_rl  # noqa: E402

distributed_env.watch_failures()  # As distributed_env.initialize does in the launchers.

c = tiny_rl.get_config().sft
c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
c.data.synthetic_size = 32
if MODE == "sft2":
  c.mesh.num_devices = 2
  result = loop.train(c, WORKDIR)
  if jax.process_index() == 0:
    print("LOSSES", json.dumps([h["loss"] for h in result.history]), flush=True)
elif MODE in ("sft", "bad_mesh"):
  if MODE == "bad_mesh":
    c.mesh.num_devices = 3
    c.mesh.shape.data, c.mesh.shape.fsdp = 3, 2
  try:
    loop.train(c, WORKDIR)
  except ValueError as e:
    print("REFUSED", e, flush=True)
    print("WROTE", json.dumps(sorted(os.listdir(WORKDIR)) if os.path.isdir(WORKDIR) else []))
    sys.exit(3)
elif MODE in ("fail", "fail0"):
  from jax.experimental import multihost_utils

  failing = 1 if MODE == "fail" else 0
  multihost_utils.sync_global_devices("both started")
  if PROCESS_ID == failing:
    raise RuntimeError(f"the data file /data/shard-{failing}.parquet is cut short")
  multihost_utils.sync_global_devices("never reached by the failing process")
  print("left the barrier", flush=True)
