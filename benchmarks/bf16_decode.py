"""A bfloat16 sampler's decode on CPU, with and without the float32 copy of the attended cache
entries (`DecodeEngine.round_upcast`), against a float32 sampler, in one run:

    python -m benchmarks.bf16_decode [--slots=16] [--filled=400] [--capacity=768] [--steps=32]
        [--runs=6] [--page_size=0]

The tiny Qwen2.5-VL; three engines decode rounds of `--steps` tokens from `--slots` slots filled
to about `--filled` tokens in a cache of `--capacity` tokens a slot (the defaults are the tiny RL
recipe's sampler: configs/tiny_rl.py): float32 weights and cache; a bfloat16 copy of the weights
with the bfloat16 cache attended as it is (XLA's CPU backend converts it to float32 for every
dot, at every step); the same with each round run on a float32 copy of the attended entries
(CPU's default). The engines take turns (`--runs` timed rounds each after one that compiles; the
best round counts, the median is printed too). Prints tokens/s, the copy's speed-up over the
plain bfloat16 engine and its rate against float32, and checks that both bfloat16 engines sample
the same tokens and log-probs (bit for bit).
"""

import statistics

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("slots", 16, "slots decoding together")
flags.DEFINE_integer("filled", 400, "tokens in each slot at the end of the timed rounds")
flags.DEFINE_integer("capacity", 768, "tokens a slot may hold")
flags.DEFINE_integer("steps", 32, "decode steps a round")
flags.DEFINE_integer("runs", 6, "timed rounds per engine (the best is used)")
flags.DEFINE_integer("page_size", 0, "tokens a page (0: a dense cache)")


def main(_):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from benchmarks.decode_rounds import timed_rounds
  from codevision_jax.models import build_model, presets
  from codevision_jax.sampling.engine import DecodeEngine
  from codevision_jax.train.step import cast_floats

  model = build_model(presets.qwen2_5_vl_tiny(), seed=0)
  bf16 = cast_floats(nnx.state(model, nnx.Param), jnp.bfloat16)
  s, steps = FLAGS.slots, FLAGS.steps
  start = FLAGS.filled - (1 + FLAGS.runs) * steps
  if start < 1 or FLAGS.filled > FLAGS.capacity:
    raise app.UsageError("--filled must exceed (1 + --runs) x --steps and be at most --capacity")
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 200, start) for _ in range(s)]
  setups = {
    "float32": dict(params=None, round_upcast=False),
    "bfloat16, as is": dict(params=bf16, round_upcast=False),
    "bfloat16, copied": dict(params=bf16, round_upcast=True),
  }
  engines = {}
  for name, setup in setups.items():
    e = DecodeEngine(model, chunk=128, page_size=FLAGS.page_size, **setup)
    e.allocate(s, FLAGS.capacity)
    e.append_many([(slot, p, None, None) for slot, p in enumerate(prompts)])
    engines[name] = e
  rounds = timed_rounds(engines, jax.random.split(jax.random.PRNGKey(0), s), steps, FLAGS.runs)
  print(
    f"decode, {s} slots filled to {FLAGS.filled} of {FLAGS.capacity} tokens"
    f"{f', pages of {FLAGS.page_size}' if FLAGS.page_size else ''}, tiny Qwen2.5-VL, {jax.default_backend()}:"
  )
  rates = {}
  for name, (times, _) in rounds.items():
    rates[name] = s * steps / min(times)
    print(
      f"  {name:17s} {rates[name]:8.0f} tokens/s (best round of {FLAGS.runs}; median "
      f"{s * steps / statistics.median(times):.0f})   attends over {engines[name].last_span} entries"
    )
  a, b = rounds["bfloat16, as is"][1], rounds["bfloat16, copied"][1]
  same = all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
  print(f"  the copy over bfloat16 as is: {rates['bfloat16, copied'] / rates['bfloat16, as is']:.2f}x")
  print(f"  the copy against float32: {rates['bfloat16, copied'] / rates['float32']:.2f}x")
  print(f"  the bfloat16 engines sample the same tokens and log-probs: {same}")


if __name__ == "__main__":
  app.run(main)
