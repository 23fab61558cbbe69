"""Peak host memory of `launch.export` over the size of what it writes.

    python -m benchmarks.export [--size_gb=1.0] [--dtype=float32]

Writes a training run of about `size_gb` of float32 parameters: an HF directory for its
architecture (a Qwen2.5-VL with a widened decoder, as benchmarks/load.py) and an Orbax checkpoint
as `launch.sft` saves one (trainable parameters with Adam's two moments, the frozen vision
tower, the config). Then exports it in a fresh subprocess and reads that process's peak resident
set size. The reference in the same run is the bare runtime: a subprocess that imports JAX, the
library and transformers, loads the tokenizer and builds the abstract model. Reports (peak_export - peak_baseline) / exported
bytes; target: at most 1.15.
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
flags.DEFINE_float("size_gb", 1.0, "approximate size of the parameters in GB (float32)")
flags.DEFINE_string("dtype", "float32", "dtype of the export")
flags.DEFINE_string("dir", None, "where to write (default: a temporary directory)")

_CHILD = r"""
import sys, time
from codevision_jax.models import abstract_model, load_config
workdir, hf_dir, out, dtype, mode = sys.argv[1:6]
t = time.perf_counter()
if mode == "export":
  from codevision_jax.runtime import export
  export.export_run(workdir, out, dtype=dtype)
else:  # The same imports, tokenizer and abstract model, without reading the checkpoint.
  from codevision_jax.processing import tokenizer
  from codevision_jax.runtime import export
  tokenizer.load_tokenizer(hf_dir)
  abstract_model(load_config(hf_dir))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(int(hwm) * 1024, time.perf_counter() - t)
"""


def _write_run(root: str, size_bytes: float) -> str:
  """An HF directory and a training run whose checkpoint holds its weights; returns the workdir."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  import codevision_jax as cvj
  from codevision_jax.processing import tokenizer as tok_lib
  from codevision_jax.runtime import checkpointing, layout, optimizer
  from configs import tiny_sft

  hf_dir = os.path.join(root, "hf")
  write_checkpoint(hf_dir, size_bytes, "float32")
  tok_lib.build_tiny_tokenizer(hf_dir)
  model = cvj.load_hf(hf_dir, dtype="float32")
  _, params, frozen, _ = nnx.split(model, optimizer.trainable_filter(True, True), nnx.Param, ...)
  params, frozen = nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)
  del model
  state = {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "opt_state": (jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params)),
  }
  cfg = tiny_sft.get_config()
  cfg.model.path, cfg.model.preset, cfg.model.vocab_size = hf_dir, "", 0
  workdir = os.path.join(root, "run")
  ckpt = checkpointing.Checkpointer(os.path.abspath(layout.checkpoints(workdir)), every=1, keep=1, async_save=False)
  ckpt.save(1, state, frozen, {}, cfg.to_dict(), force=True)
  ckpt.close()
  return workdir


def _child(workdir: str, out: str, mode: str) -> tuple[int, float]:
  hf_dir = os.path.join(os.path.dirname(workdir), "hf")
  res = subprocess.run(
    [sys.executable, "-c", _CHILD, workdir, hf_dir, out, FLAGS.dtype, mode],
    check=True,
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  rss, seconds = res.stdout.split()[-2:]
  return int(rss), float(seconds)


def main(argv):
  del argv
  root = FLAGS.dir or tempfile.mkdtemp(prefix="cvj-export-bench-")
  try:
    t = time.perf_counter()
    workdir = _write_run(root, FLAGS.size_gb * 1e9)
    print(f"wrote the run in {time.perf_counter() - t:.1f}s: {workdir}")
    out = os.path.join(root, "export")
    baseline, _ = _child(workdir, out, "baseline")
    peak, seconds = _child(workdir, out, "export")
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    ratio = (peak - baseline) / size
    print(f"exported {size / 1e9:.2f} GB of {FLAGS.dtype} weights in {seconds:.1f}s")
    print(f"baseline peak RSS (runtime, no weights): {baseline / 1e9:.3f} GB")
    print(f"export peak RSS:                         {peak / 1e9:.3f} GB")
    print(f"(peak - baseline) / exported size = {ratio:.3f}  (target <= 1.15)")
  finally:
    if FLAGS.dir is None:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
