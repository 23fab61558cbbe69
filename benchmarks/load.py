"""Peak host memory of `load_hf` over the checkpoint size.

    python -m benchmarks.load [--size_gb=1.0] [--dtype=float32]

Writes a random Qwen2.5-VL checkpoint of about `size_gb` (its decoder widened to reach the size,
in several safetensors shards), then loads it with `cvj.load_hf` in a fresh subprocess and reads
that process's peak resident set size. The reference in the same run is the bare runtime: a
subprocess that imports JAX and the library and builds the abstract model, without loading.
Reports (peak_load - peak_baseline) / checkpoint_bytes; target: at most 1.15.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks.big_checkpoint import write_checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_float("size_gb", 1.0, "approximate checkpoint size in GB")
flags.DEFINE_string("dtype", "float32", "dtype of the checkpoint and of the loaded parameters")
flags.DEFINE_string("dir", None, "where to write the checkpoint (default: a temporary directory)")

_CHILD = r"""
import sys, time
import jax, numpy as np
import codevision_jax as cvj
from codevision_jax.models import abstract_model, load_config
path, dtype, mode = sys.argv[1:4]
t = time.perf_counter()
if mode == "load":
  model = cvj.load_hf(path, dtype=dtype)
  jax.block_until_ready(jax.tree.leaves(__import__("flax").nnx.state(model)))
else:
  abstract_model(load_config(path))
# VmHWM: the peak resident set of this address space (ru_maxrss would include the parent's,
# which Linux carries across fork and exec).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(int(hwm) * 1024, time.perf_counter() - t)
"""


def _child(path: str, mode: str) -> tuple[int, float]:
  out = subprocess.run(
    [sys.executable, "-c", _CHILD, path, FLAGS.dtype, mode],
    check=True,
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  rss, seconds = out.stdout.split()[-2:]
  return int(rss), float(seconds)


def main(argv):
  del argv
  root = FLAGS.dir or tempfile.mkdtemp(prefix="cvj-load-bench-")
  path = os.path.join(root, "ckpt")
  try:
    t = time.perf_counter()
    size = write_checkpoint(path, FLAGS.size_gb * 1e9, FLAGS.dtype)
    print(f"wrote {size / 1e9:.2f} GB checkpoint in {time.perf_counter() - t:.1f}s: {path}")
    baseline, _ = _child(path, "baseline")
    peak, seconds = _child(path, "load")
    ratio = (peak - baseline) / size
    print(f"baseline peak RSS (runtime, no weights): {baseline / 1e9:.3f} GB")
    print(
      f"load_hf peak RSS:                        {peak / 1e9:.3f} GB  ({seconds:.1f}s, {size / 1e9 / seconds:.2f} GB/s)"
    )
    print(f"(peak - baseline) / checkpoint size = {ratio:.3f}  (target <= 1.15)")
  finally:
    if FLAGS.dir is None:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
