"""Timed decode rounds of several engines, taking turns (benchmarks/kv_cache.py, benchmarks/bf16_decode.py)."""

import time

import jax
import numpy as np


def timed_rounds(engines: dict, keys, steps: int, runs: int) -> dict:
  """Decode rounds of `steps` tokens from every slot of each engine (filled alike): one round
  that compiles, then `runs` timed ones, the engines taking turns (a shared machine slows them
  alike). Returns {name: (the timed rounds' seconds, every round's (tokens, log-probs))}."""
  out = {name: ([], []) for name in engines}
  counts = {name: np.zeros(len(keys), np.int32) for name in engines}
  for r in range(1 + runs):
    for name, e in engines.items():
      t0 = time.perf_counter()
      t, lp, n = e.decode(
        np.ones(len(keys), bool), np.full(len(keys), steps), keys, counts[name], max_steps=steps, temperature=1.0
      )
      jax.block_until_ready(t)
      if r:
        out[name][0].append(time.perf_counter() - t0)
      out[name][1].append((np.asarray(t), np.asarray(lp)))
      counts[name] = counts[name] + np.asarray(n)
  return out
