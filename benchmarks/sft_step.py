"""SFT train-step throughput: tokens/s and MFU of one config, against a matmul peak measured in
the same run.

    python -m benchmarks.sft_step --config=configs/tiny_sft.py [--steps=5] [--config.train.remat=full]

Builds the run exactly as `launch.sft` does (model, data plan, sharded state, the jitted step),
takes the first batch of the plan and times `--steps` calls of the step on it after `--warmup`
calls (compilation). Reports the median step time, real (non-padding) tokens per second, the
model FLOPs of the step (`runtime.metrics.step_flops`, 6N per token plus attention) per second,
and two utilisations:

* MFU against the device's published dense bf16 peak (GPUs and TPUs; not known for CPUs);
* the ratio against the reference: a large float32 matmul in the same precision and on the
  same devices, timed in the same run (the best this machine does on pure matmuls).
"""

import statistics
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_sft.py", "Config file.")
flags.DEFINE_integer("steps", 5, "timed steps (the median is reported)")
flags.DEFINE_integer("warmup", 2, "untimed steps first (compilation)")
flags.DEFINE_integer("matmul", 2048, "side of the square matmul of the reference")
FLAGS = flags.FLAGS


def matmul_peak(mesh, n: int, dtype) -> float:
  """FLOP/s of an n x n x n matmul on every device of the mesh at once (sharded over rows)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  rows = NamedSharding(mesh, P(mesh.axis_names))
  a = jax.device_put(jnp.ones((n * mesh.size, n), dtype), rows)
  b = jax.device_put(jnp.ones((n, n), dtype), NamedSharding(mesh, P()))
  f = jax.jit(lambda a, b: (a @ b) * 0.5, out_shardings=rows)
  f(a, b).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 * mesh.size / statistics.median(times)


def time_step(run, batch: dict, grids, *, steps: int, warmup: int) -> dict:
  """Times the run's jitted step on one host batch (without its "image_grid_thw", given as
  `grids`): `warmup` untimed calls (compilation), then `steps` timed ones. The run's state is
  donated to the step (do not reuse `run.state`). Returns {"seconds" (median), "times", "loss",
  "tokens" (real tokens), "flops" (model FLOPs of the step)}."""
  import jax
  from codevision_jax.train import loop

  step, batch_sh = run.jit_step(batch)
  flops, tokens = loop.host_step_flops(run, batch, grids)
  state, times = run.state, []
  for i in range(warmup + steps):
    t = time.perf_counter()
    state, m = step(state, run.frozen, loop.to_global(batch, batch_sh))
    jax.block_until_ready(m)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  run.state = None
  del state
  return {
    "seconds": statistics.median(times),
    "times": times,
    "loss": float(m["loss"]),
    "tokens": tokens,
    "flops": flops,
  }


def main(argv):
  del argv
  import jax
  from codevision_jax.train import loop
  from codevision_jax.runtime import metrics, run_setup

  cfg = _CONFIG.value
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.build(cfg, workdir)
  batch = run.builder(run.plan[0])
  grids = batch.pop("image_grid_thw")
  timed = time_step(run, batch, grids, steps=FLAGS.steps, warmup=FLAGS.warmup)
  seconds, times, flops, tokens = timed["seconds"], timed["times"], timed["flops"], timed["tokens"]
  dtype = run_setup.DTYPES[cfg.train.compute_dtype]
  reference = matmul_peak(run.mesh, FLAGS.matmul, dtype)
  kind = jax.devices()[0].device_kind
  peak = metrics.peak_flops(kind, cfg.train.peak_tflops) * run.mesh.size
  shape = batch["input_ids"].shape
  print(
    f"devices: {run.mesh.size} x {kind}; mesh {dict(run.mesh.shape)}; compute {cfg.train.compute_dtype}; "
    f"remat {cfg.train.remat}"
  )
  print(
    f"batch [microbatches, rows, T] = {list(shape)}, {tokens:.0f} real tokens "
    f"({tokens / (shape[0] * shape[1] * shape[2]):.0%} of the padded), "
    f"{float(grids.prod(-1).sum()):.0f} image patches of a budget of {batch['vision'].pixel_values.shape[1]}"
  )
  print(
    f"step: {seconds * 1e3:.1f} ms median of {len(times)} "
    f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}); loss {timed['loss']:.4f}"
  )
  print(f"tokens/s: {tokens / seconds:,.0f}")
  print(f"model FLOPs: {flops / 1e9:.2f} GFLOP/step, {flops / seconds / 1e9:.2f} GFLOP/s")
  print(
    f"reference: {FLAGS.matmul}^3 {dtype.__name__ if hasattr(dtype, '__name__') else dtype} matmul "
    f"per device: {reference / 1e9:.2f} GFLOP/s"
  )
  print(f"ratio (model FLOP/s / reference matmul FLOP/s): {flops / seconds / reference:.3f}")
  print(
    "MFU (against the published peak): "
    + (
      f"{flops / seconds / peak:.3f}"
      if peak
      else f"n/a (no published peak for {kind!r}; set --config.train.peak_tflops)"
    )
  )


if __name__ == "__main__":
  app.run(main)
