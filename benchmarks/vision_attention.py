"""The vision tower with attention per image and per window (a band of keys around each block of
patches) against attention over all the microbatch's patches under a segment mask, in one run.

    python -m benchmarks.vision_attention [--family=qwen2_5_vl] [--images=8] [--side=448]
        [--depth=4] [--runs=3] [--dtype=float32]

The tower is the real one of the family (Qwen2.5-VL: hidden 1280, 16 heads, 112-pixel windows,
full attention in every 8th block; Qwen3-VL-8B's: hidden 1152, 16 heads, full attention
everywhere) with `--depth` blocks (full attention in the last), random weights, and `--images`
square images of `--side` pixels in one microbatch. Timed: the jitted forward, median of
`--runs` calls after one warm-up; prints both, the max difference of the outputs, and the ratio
(dense time over banded). On an accelerator add --backward to time forward + backward.
"""

import dataclasses
import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("family", "qwen2_5_vl", ["qwen2_5_vl", "qwen3_vl"], "vision tower to measure")
flags.DEFINE_integer("images", 8, "images in the microbatch")
flags.DEFINE_integer("side", 448, "side of each square image, in pixels")
flags.DEFINE_integer("depth", 4, "vision blocks (the last has full attention)")
flags.DEFINE_integer("runs", 3, "timed calls of each (median)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter and compute dtype")
flags.DEFINE_bool("backward", False, "time forward + backward (gradient of the sum of outputs)")


def _time(fn, *args) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.runs):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from codevision_jax.models import build_model, prepare, presets
  from codevision_jax.models.vision import band_geometry

  name = "qwen2_5_vl_7b" if FLAGS.family == "qwen2_5_vl" else "qwen3_vl_8b"
  mc = presets.preset(name)
  v = mc.vision
  over = dict(depth=FLAGS.depth)
  if FLAGS.family == "qwen2_5_vl":
    over["fullatt_block_indexes"] = (FLAGS.depth - 1,)
  else:
    over["deepstack_visual_indexes"] = ()
  mc = dataclasses.replace(
    mc,
    vision=dataclasses.replace(v, **over),
    text=dataclasses.replace(
      mc.text,
      num_hidden_layers=1,
      vocab_size=512,
      hidden_size=256,
      intermediate_size=256,
      num_attention_heads=2,
      num_key_value_heads=1,
    ),
  )
  model = build_model(mc, seed=0, param_dtype=jnp.dtype(FLAGS.dtype))
  visual = model.model.visual
  cells = FLAGS.side // (v.patch_size * v.spatial_merge_size) * v.spatial_merge_size
  grid = np.asarray([[1, cells, cells]] * FLAGS.images, np.int64)
  meta = prepare.vision_metadata(mc, grid).as_arrays()
  n = int(grid.prod(-1).sum())
  rng = np.random.default_rng(0)
  pixels = jnp.asarray(rng.standard_normal((n, 3 * v.temporal_patch_size * v.patch_size**2)), jnp.dtype(FLAGS.dtype))
  graphdef, state = nnx.split(visual)

  def forward(state, pixels, meta):
    return nnx.merge(graphdef, state)(pixels, meta)[0]

  fn = forward
  if FLAGS.backward:
    fn = jax.grad(lambda s, p, m: jnp.sum(forward(s, p, m).astype(jnp.float32)))
  fn = jax.jit(fn)
  dense_meta = meta.replace(full_span=0, window_span=0)
  print(
    f"{FLAGS.family} vision tower, {FLAGS.depth} blocks, {FLAGS.images} images of "
    f"{FLAGS.side}x{FLAGS.side} ({n} patches, {cells * cells} per image), {FLAGS.dtype}, "
    f"{'forward + backward' if FLAGS.backward else 'forward'}, {jax.devices()[0].device_kind}"
  )
  for what, span in (("full", meta.full_span), ("window", meta.window_span)):
    g = band_geometry(n, span)
    keys = (2 * g[1] + 1) * g[0] if g else n
    print(f"  {what} attention: span {span}, {keys} keys per query (dense: {n})")
  banded = _time(fn, state, pixels, meta)
  dense = _time(fn, state, pixels, dense_meta)
  if not FLAGS.backward:
    diff = float(
      jnp.abs(fn(state, pixels, meta).astype(jnp.float32) - fn(state, pixels, dense_meta).astype(jnp.float32)).max()
    )
    print(f"  max |banded - dense| = {diff:.2e}")
  print(f"  banded {banded * 1e3:.1f} ms, dense {dense * 1e3:.1f} ms: {dense / banded:.2f}x")


if __name__ == "__main__":
  app.run(main)
