"""One process of a multi-process `load_hf`, for tests/test_multiprocess.py.

    python tests/multiprocess_load.py PROCESS_ID NUM_PROCESSES PORT HF_DIR OUT.json

Each of NUM_PROCESSES processes simulates 8 / NUM_PROCESSES CPU devices and joins the others
through `jax.distributed.initialize`; together they load HF_DIR onto a (data 1, fsdp 4, tensor 2)
mesh over all 8 devices, which shards the parameters across the processes. Process 0 writes, for
every process, the tensor bytes it read and the bytes its devices hold, the checkpoint's total,
and whether the loaded parameters (gathered) equal the checkpoint's tensors.
"""

import json
import sys

import multiprocess_util

PROCESS_ID, NUM_PROCESSES, (HF_DIR, OUT) = multiprocess_util.join(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from codevision_jax import parallel  # noqa: E402
from codevision_jax.hf import keymap, load  # noqa: E402

readers = []


class CountingFile(load.SafetensorsFile):
  def __init__(self, path):
    super().__init__(path)
    readers.append(self)


load.SafetensorsFile = CountingFile  # Counts what load_hf reads.
mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
model = load.load_hf(HF_DIR, dtype="float32", mesh=mesh)
state = nnx.state(model, nnx.Param)
read = sum(r.bytes_read for r in readers)
held = sum(
  int(np.prod([hi - lo for lo, hi in load.held_box(v.shape, v.sharding)])) * v.dtype.itemsize
  for v in jax.tree.leaves(nnx.to_pure_dict(state))
)

gathered = multihost_utils.process_allgather(nnx.to_pure_dict(state), tiled=True)
counts = np.asarray(multihost_utils.process_allgather(np.asarray([read, held], np.int64)))
if jax.process_index() == 0:
  flat = {
    tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(gathered)[0]
  }
  in_files = {keymap.to_transformers_layout(k): (k, r) for k, r in load._checkpoint_readers(HF_DIR).items()}
  total, equal = 0, True
  for m in keymap.param_mappings(state, model.config):
    key, reader = in_files[m.hf_key]
    whole = m.from_hf(reader.read(key))
    total += whole.nbytes
    equal &= bool(np.array_equal(flat[tuple(str(p) for p in m.path)], whole))
  counts = counts.reshape(-1, 2)
  with open(OUT, "w") as f:
    json.dump({"read": counts[:, 0].tolist(), "held": counts[:, 1].tolist(), "total": total, "equal": equal}, f)
