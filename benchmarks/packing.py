"""Sequence packing against length buckets, on a length distribution like CodeVision's SFT data.

    python -m benchmarks.packing [--records=2000] [--steps=6] [--scale=16]

Record lengths are drawn log-uniformly between 2k and 32k tokens with 1-6 images each (the
distribution of CodeVision's multi-turn trajectories); both plans use the same records, seed,
buckets (4k, 8k, 16k, 32k) and rows per microbatch:

* the fraction of real tokens in the planned microbatches (real tokens over rows x bucket), for
  `data.packing` "none" (one record per row, today's buckets with sort_window 8), "first_fit"
  and "best_fit", over the whole epoch;
* tokens/s of a small decoder's train step (forward + backward; `--hidden` 512, `--layers` 2,
  the XLA attention backend with its dense segment mask) on the first `--steps` microbatches of
  each plan, lengths divided by `--scale` so that it runs on a CPU (2k-32k -> 128-2k tokens),
  images left out; compilation excluded (each bucket is compiled first). The dense mask makes a
  packed row pay attention over its whole length; a segment-aware kernel (Splash, cuDNN) skips
  the blocks between segments.

Prints both and the ratios of packing over buckets, measured in the same run.
"""

import dataclasses
import functools
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("records", 2000, "records in the synthetic length distribution")
flags.DEFINE_integer("steps", 6, "microbatches timed per plan")
flags.DEFINE_integer("scale", 16, "divide lengths by this for the timed steps")
flags.DEFINE_integer("rows", 4, "rows per microbatch")
flags.DEFINE_integer("seed", 0, "seed of the lengths and of the plans")
flags.DEFINE_integer("hidden", 512, "hidden size of the timed decoder (heads of 64)")
flags.DEFINE_integer("layers", 2, "decoder layers of the timed model")

BUCKETS = (4096, 8192, 16384, 32768)


def _sizes(n, seed):
  import numpy as np

  rng = np.random.default_rng(seed)
  tokens = np.exp(rng.uniform(np.log(2048), np.log(32768), n)).astype(np.int64)
  images = rng.integers(1, 7, n)
  return np.stack([tokens, images * 256, images], axis=1)  # 256 patches per image (448 px)


def _real_fraction(plan_batches, sizes, packed, rows):
  real = padded = 0
  for bucket, groups in plan_batches:
    for g in groups:
      members = [i for row in g for i in row] if packed else list(g)
      real += int(sizes[members, 0].sum())
      padded += rows * bucket
  return real / padded


def main(argv):
  del argv
  import jax
  import numpy as np
  from flax import nnx

  from codevision_jax.data import pack, pipeline
  from codevision_jax.data.encode import Example
  from codevision_jax.models import build_model, presets
  from codevision_jax.train import step as step_lib

  sizes = _sizes(FLAGS.records, FLAGS.seed)
  # Budgets for rows full of images (a 32k row holds up to 128 images' tokens): the same for
  # every plan, so that only the token layout differs.
  common = dict(
    buckets=BUCKETS, batch_size=FLAGS.rows, patch_budget=FLAGS.rows * 128 * 256, max_images=FLAGS.rows * 128
  )
  plans = {
    "none": pipeline.BatchSpec(**common, sort_window=8),
    "first_fit": pipeline.BatchSpec(**common, packing="first_fit"),
    "best_fit": pipeline.BatchSpec(**common, packing="best_fit"),
  }
  epochs = {k: pipeline.plan_epoch(sizes, s, FLAGS.seed, 0) for k, s in plans.items()}
  fraction = {k: _real_fraction(epochs[k], sizes, k != "none", FLAGS.rows) for k in plans}

  base = presets.qwen2_5_vl_tiny(512)
  mc = base.replace(
    text=dataclasses.replace(
      base.text,
      hidden_size=FLAGS.hidden,
      intermediate_size=FLAGS.hidden * 3,
      num_hidden_layers=FLAGS.layers,
      num_attention_heads=FLAGS.hidden // 64,
      num_key_value_heads=max(FLAGS.hidden // 256, 1),
      mrope_section=(8, 12, 12),
    )
  )
  model = build_model(mc, seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  grad = jax.jit(
    jax.grad(
      functools.partial(
        step_lib.microbatch_loss, frozen={}, graphdef=graphdef, rest=rest, options=step_lib.StepOptions()
      ),
      has_aux=True,
    )
  )
  rng = np.random.default_rng(FLAGS.seed)
  s = FLAGS.scale

  def microbatch(bucket, group, packed):
    rows = group if packed else [[i] for i in group]
    examples, rows_of = [], []
    for r, row in enumerate(rows):
      for i in row:
        n = max(int(sizes[i, 0]) // s, 2)
        examples.append(
          Example(
            rng.integers(0, 380, n).astype(np.int32),
            np.ones(n, np.int32),
            np.zeros((0, 3 * 2 * 14 * 14), np.float32),
            np.zeros((0, 3), np.int64),
          )
        )
        rows_of.append(r)
    mb = pack.pack(
      examples,
      length=bucket // s,
      rows=FLAGS.rows,
      patch_budget=0,
      max_images=1,
      model_config=mc,
      pad_id=0,
      rows_of=rows_of,
    )
    mb.pop("image_grid_thw")
    return mb, int(sum(len(e) for e in examples))

  speed = {}
  for name, batches in epochs.items():
    mbs = [microbatch(bucket, groups[0], name != "none") for bucket, groups in batches[: FLAGS.steps]]
    for shape in {mb["input_ids"].shape for mb, _ in mbs}:  # Compile every shape first.
      mb = next(m for m, _ in mbs if m["input_ids"].shape == shape)
      jax.block_until_ready(grad(params, mb=mb))
    t = time.perf_counter()
    for mb, _ in mbs:
      jax.block_until_ready(grad(params, mb=mb))
    speed[name] = sum(n for _, n in mbs) / (time.perf_counter() - t)

  print(
    f"{FLAGS.records} records, 2k-32k tokens (log-uniform), 1-6 images; buckets {BUCKETS}, "
    f"{FLAGS.rows} rows per microbatch"
  )
  print(f"{'plan':<10} {'microbatches':>12} {'real tokens':>12} {'tokens/s (/' + str(s) + ')':>16}")
  for name in plans:
    print(f"{name:<10} {len(epochs[name]):>12} {fraction[name]:>11.1%} {speed[name]:>16,.0f}")
  for name in ("first_fit", "best_fit"):
    print(
      f"{name} over buckets: real-token fraction {fraction[name] / fraction['none']:.2f}x, "
      f"tokens/s {speed[name] / speed['none']:.2f}x"
    )


if __name__ == "__main__":
  app.run(main)
