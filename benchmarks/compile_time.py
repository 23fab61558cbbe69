"""Compile time of a training step with and without scanned decoder layers (`model.scan_layers`).

    python -m benchmarks.compile_time [--family=qwen2_5_vl] [--depths=4,16] [--remat=full]
        [--batch=2] [--seq=128]

For each depth, a random model of the family's tiny preset with that many decoder layers (hidden
128; text-only batch [batch, seq]) is built unscanned and scanned, and the forward + backward of
a mean-squared-logits loss, with the `--remat` policy, is lowered and compiled with `jax.jit`
(`.lower(...).compile()`, nothing executed; the fastest of `--repeats`, each from a fresh model
so that no cache answers). Printed per depth: lowering and compile seconds and StableHLO
characters of both, and the ratio scanned / unscanned of lower + compile time measured in the same
run. Unscanned compile time grows with depth; scanned stays about flat (on CPU the scanned
backward pass has a fixed cost of a few seconds, so the scan wins from a depth of about 16).
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from codevision_jax.models import build_model, presets
from codevision_jax.runtime import remat

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "qwen2_5_vl", "qwen2_5_vl or qwen3_vl")
flags.DEFINE_list("depths", ["4", "16"], "decoder depths to measure")
flags.DEFINE_string("remat", "full", "remat policy: none, full, dots, dots_all")
flags.DEFINE_integer("batch", 2, "rows of the batch")
flags.DEFINE_integer("seq", 128, "tokens per row")
flags.DEFINE_integer("repeats", 2, "measurements of each (the fastest is kept: a shared CPU is noisy)")


def config(family: str, depth: int):
  """The family's tiny preset with `depth` decoder layers."""
  cfg = presets.preset(f"{family}_tiny")
  text = cfg.text.__class__(**{**cfg.text.__dict__, "num_hidden_layers": depth})
  return cfg.replace(text=text)


def measure(cfg, scan: bool, policy: str, batch: int, seq: int) -> dict:
  """Seconds to lower and to compile the gradient step of `cfg`, and its StableHLO size."""
  model = remat.apply_remat(build_model(cfg, scan_layers=scan), policy)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids = jnp.zeros((batch, seq), jnp.int32)

  def step(params, rest, ids):
    def loss(params):
      return jnp.mean(nnx.merge(graphdef, params, rest).forward(ids) ** 2)

    return jax.value_and_grad(loss)(params)

  t0 = time.perf_counter()
  lowered = jax.jit(step).lower(params, rest, ids)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "hlo_chars": len(lowered.as_text())}


def main(_):
  print(
    f"{jax.default_backend()} backend; {FLAGS.family}_tiny, remat {FLAGS.remat}, "
    f"batch {FLAGS.batch} x {FLAGS.seq} tokens; forward + backward"
  )
  for depth in map(int, FLAGS.depths):
    cfg = config(FLAGS.family, depth)
    measure(cfg, True, FLAGS.remat, FLAGS.batch, 8)  # Warms up JAX's own caches and imports.
    rows = {}
    for scan in (False, True):
      runs = [measure(cfg, scan, FLAGS.remat, FLAGS.batch, FLAGS.seq) for _ in range(FLAGS.repeats)]
      rows[scan] = min(runs, key=lambda r: r["lower_s"] + r["compile_s"])
    for scan, r in rows.items():
      print(
        f"depth {depth:3d} {'scan   ' if scan else 'no scan'}: lower {r['lower_s']:6.2f} s, "
        f"compile {r['compile_s']:6.2f} s, StableHLO {r['hlo_chars']:9d} chars"
      )
    total = {scan: r["lower_s"] + r["compile_s"] for scan, r in rows.items()}
    print(f"depth {depth:3d} ratio scan / no scan (lower + compile): {total[True] / total[False]:.3f}")


if __name__ == "__main__":
  app.run(main)
