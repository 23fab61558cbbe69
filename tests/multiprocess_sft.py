"""One process of a multi-process SFT run on CPU, for tests/test_multiprocess.py.

    python tests/multiprocess_sft.py PROCESS_ID NUM_PROCESSES PORT WORKDIR STEPS OUT.npz [KILL_AT]

Each of NUM_PROCESSES processes simulates 8 / NUM_PROCESSES CPU devices; with more than one they
join through `jax.distributed.initialize` (coordinator on 127.0.0.1:PORT, gloo collectives) and
train the tiny recipe on one (data 2, fsdp 2, tensor 2) mesh over all 8 devices. After STEPS
steps process 0 writes the trained parameters (gathered from every process) to OUT.npz, with the
steps this run trained and the fingerprints of the batches each process read. With KILL_AT, every
process SIGKILLs itself once that step's checkpoint is on disk (a preempted job), process 0 (which holds
the coordination service) last.
"""

import json
import os
import signal
import sys
import time

import multiprocess_util

PROCESS_ID, NUM_PROCESSES, ARGS = multiprocess_util.join(sys.argv)
WORKDIR, STEPS, OUT = ARGS[0], int(ARGS[1]), ARGS[2]
KILL_AT = int(ARGS[3]) if len(ARGS) > 3 else None

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from codevision_jax.train import loop  # noqa: E402
from configs import tiny_sft  # noqa: E402

OVERRIDES = {  # The tiny recipe at test size, on all 8 devices of every process together.
  "data.synthetic_size": 48,
  "data.buckets": (512,),
  "data.drop_oversized": True,
  "data.batch_size": 4,
  "data.patch_budget": 64,
  "data.max_pixels": 28 * 28 * 4,
  "train.log_every": 1,
  "train.checkpoint_every": 3,
  "data.groups": 2,
  "mesh.num_devices": 0,
  "mesh.shape.data": 2,
  "mesh.shape.fsdp": 2,
  "mesh.shape.tensor": 2,
}


def config(steps):
  c = tiny_sft.get_config()
  for key, value in {**OVERRIDES, "train.steps": steps}.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _dead(pid_file: str) -> bool:
  """Whether the process whose pid `pid_file` holds has died (gone, or a zombie not yet reaped);
  False while the file is not there."""
  if not os.path.exists(pid_file):
    return False
  with open(pid_file) as f:
    pid = f.read()
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
  except FileNotFoundError:
    return True


def kill(step, checkpointer):
  if step == KILL_AT:
    checkpointer.wait()
    # Process 0 holds the coordination service: it dies last, once the others are dead, so that
    # none of them loses the service while still in the checkpoint's barrier (it would abort
    # with its own status instead of being killed).
    me = jax.process_index()
    if me:
      path = os.path.join(WORKDIR, f"killed.{me}")
      with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
      os.replace(path + ".tmp", path)  # Whole or absent for process 0.
    else:
      for other in range(1, jax.process_count()):
        while not _dead(os.path.join(WORKDIR, f"killed.{other}")):
          time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


result = loop.train(config(STEPS), WORKDIR, hooks=[kill] if KILL_AT else [])
params = multihost_utils.process_allgather(result.state["params"], tiled=True)
fingerprints = multihost_utils.process_allgather(np.asarray([h["batch_hash"] for h in result.history], np.int64))
if jax.process_index() == 0:
  flat = {
    "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  np.savez(OUT, **flat)
  with open(OUT + ".json", "w") as f:
    json.dump({"steps": [h["step"] for h in result.history], "fingerprints": np.asarray(fingerprints).tolist()}, f)
