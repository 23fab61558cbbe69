"""The paged KV cache against the dense one, on CPU with the tiny model, in one run:

    python -m benchmarks.kv_cache [--slots=8] [--filled=2048] [--capacity=32768] [--page_size=64]
        [--steps=32] [--runs=6] [--append_tokens=64] [--budget_slots=64] [--max_len=16384]

1. Decode tokens/s with `--slots` slots filled to about `--filled` tokens, for four engines:
   dense at `--capacity` tokens a slot (today's engine), paged at the same capacity (a pool of
   `slots x filled` tokens; CPU's default: each round gathers its pages once), paged gathering
   at every step (what accelerators run without a kernel), and dense at a capacity of `--filled`
   (a cache exactly as short as the tokens in use). The engines take turns decoding rounds of
   `--steps` tokens (`--runs` timed rounds each after one that compiles; the best round counts,
   the median is printed too: on a shared machine the best is the stable figure); the slots end
   at `--filled`. Prints paged / dense-at-capacity and paged / dense-short (target: at least
   0.9) and checks that all sample the same tokens.
2. Batched appends (`DecodeEngine.append_many`) of 1 to 16 rows of `--append_tokens` tokens to
   slots filled past 1k tokens (4k attended entries): milliseconds a row, with the rows of a call
   unbounded (as accelerators run) and with CPU's bound (`engine.CPU_APPEND_ENTRIES`), and the
   ratio to appending one row alone (median of `--runs` after one that compiles).
3. Trajectories in flight at a fixed memory budget: `--budget_slots` dense slots of `--max_len`
   tokens, against a paged pool of the same tokens filled with trajectories whose lengths are
   log-uniform in [1024, max_len] (page rounding included; the mean over 20 draws).
"""

import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("slots", 8, "slots decoding together")
flags.DEFINE_integer("filled", 2048, "tokens in each slot at the end of the timed rounds")
flags.DEFINE_integer("capacity", 32768, "tokens a slot may hold")
flags.DEFINE_integer("page_size", 64, "tokens a page")
flags.DEFINE_integer("steps", 32, "decode steps a round")
flags.DEFINE_integer("runs", 6, "timed rounds per engine (the best is used)")
flags.DEFINE_integer("append_tokens", 64, "tokens of each row of a batched append")
flags.DEFINE_integer("budget_slots", 64, "dense slots of the memory budget")
flags.DEFINE_integer("max_len", 16384, "longest trajectory (the dense slot's capacity)")

TARGET = 0.9


def decode_rates() -> dict:
  import jax
  import numpy as np
  from benchmarks.decode_rounds import timed_rounds
  from codevision_jax.models import build_model, presets
  from codevision_jax.sampling.engine import DecodeEngine

  model = build_model(presets.qwen2_5_vl_tiny(), seed=0)
  s, steps = FLAGS.slots, FLAGS.steps
  start = FLAGS.filled - (1 + FLAGS.runs) * steps
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 200, start) for _ in range(s)]
  keys = jax.random.split(jax.random.PRNGKey(0), s)
  setups = {
    "dense at capacity": dict(capacity=FLAGS.capacity),
    "paged at capacity": dict(capacity=FLAGS.capacity, page_size=FLAGS.page_size, pool_tokens=s * FLAGS.filled),
    "paged, step gather": dict(
      capacity=FLAGS.capacity, page_size=FLAGS.page_size, pool_tokens=s * FLAGS.filled, round_gather=False
    ),
    "dense short": dict(capacity=FLAGS.filled),
  }
  engines = {}
  for name, setup in setups.items():
    e = DecodeEngine(model, chunk=128, page_size=setup.get("page_size", 0), round_gather=setup.get("round_gather"))
    e.allocate(s, setup["capacity"], setup.get("pool_tokens"))
    e.append_many([(slot, p, None, None) for slot, p in enumerate(prompts)])
    engines[name] = e
  rounds = timed_rounds(engines, keys, steps, FLAGS.runs)
  rates = {}
  for name, (times, _) in rounds.items():
    e = engines[name]
    assert int(e.lengths.max()) == FLAGS.filled, e.lengths
    rates[name] = s * steps / min(times)
    print(
      f"  {name:18s} {rates[name]:9.0f} tokens/s (best round of {FLAGS.runs}; median "
      f"{s * steps / statistics.median(times):.0f})   attends over {e.last_span} entries"
    )
  short = np.concatenate([t for t, _ in rounds["dense short"][1]], 1)
  same = all((np.concatenate([t for t, _ in out], 1) == short).all() for _, out in rounds.values())
  print(f"  same tokens: {same}")
  return rates


def append_costs() -> None:
  import jax
  import numpy as np
  from codevision_jax.models import build_model, presets
  from codevision_jax.sampling import engine as engine_lib

  model = build_model(presets.qwen2_5_vl_tiny(), seed=0)
  rng = np.random.default_rng(0)
  sizes, n = (1, 2, 4, 8, 16), FLAGS.append_tokens
  for label, bound in (("unbounded", 0), ("CPU bound", engine_lib.CPU_APPEND_ENTRIES)):
    e = engine_lib.DecodeEngine(model, chunk=128, append_entries=bound)
    e.allocate(max(sizes), 4096)
    e.append_many([(slot, rng.integers(1, 200, 1200), None, None) for slot in range(max(sizes))])
    per_row = {}
    for rows in sizes:
      times = []
      for r in range(1 + FLAGS.runs):
        items = [(slot, rng.integers(1, 200, n), None, None) for slot in range(rows)]
        t0 = time.perf_counter()
        e.append_many(items)
        jax.block_until_ready(e.state)
        if r:
          times.append(time.perf_counter() - t0)
        assert e.last_span == 4096, e.last_span  # The entries the call attended over.
      per_row[rows] = statistics.median(times) / rows * 1e3
    print(
      f"  {label:10s} ms a row: "
      + ", ".join(f"{r} rows {per_row[r]:.1f} ({per_row[r] / per_row[1]:.2f}x)" for r in sizes)
    )


def in_flight() -> tuple[float, int]:
  import numpy as np
  from codevision_jax.sampling.paged import PagePool

  budget = FLAGS.budget_slots * FLAGS.max_len
  p = FLAGS.page_size
  rng = np.random.default_rng(0)
  counts = []
  for _ in range(20):
    n = budget // p
    pool = PagePool(n + 1, p, num_slots=4 * n // (1024 // p), max_pages=FLAGS.max_len // p)
    slot = 0
    while pool.reserve(slot, int(np.exp(rng.uniform(np.log(1024), np.log(FLAGS.max_len))))):
      slot += 1
    counts.append(slot)
  return float(np.mean(counts)), FLAGS.budget_slots


def main(_):
  print(f"decode, {FLAGS.slots} slots filled to {FLAGS.filled} tokens, tiny Qwen2.5-VL, CPU:")
  rates = decode_rates()
  paged = rates["paged at capacity"]
  print(f"paged / dense at capacity {FLAGS.capacity}: {paged / rates['dense at capacity']:.2f}x")
  ratio = paged / rates["dense short"]
  print(
    f"paged / dense at capacity {FLAGS.filled}: {ratio:.2f}x (target >= {TARGET}: "
    f"{'met' if ratio >= TARGET else 'NOT met'})"
  )
  print(f"batched appends of {FLAGS.append_tokens} tokens a row, slots past 1k tokens (4k attended entries):")
  append_costs()
  paged_n, dense_n = in_flight()
  print(
    f"trajectories in flight in {FLAGS.budget_slots} x {FLAGS.max_len} tokens, lengths "
    f"log-uniform 1k-{FLAGS.max_len // 1024}k: paged {paged_n:.1f}, dense {dense_n}: "
    f"{paged_n / dense_n:.2f}x"
  )


if __name__ == "__main__":
  app.run(main)
