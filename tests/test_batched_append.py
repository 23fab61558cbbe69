"""Appends due together go in one batched call (`DecodeEngine.append_many`: one vision-tower call,
the segments prefilled together): the slots end as per-slot appends leave them (pending logits,
lengths, and the tokens and log-probs decoded after), for a dense and a paged cache, and with
the rows of one call bounded (`append_entries`, CPU's default) as without."""

import jax
import numpy as np
import pytest

from codevision_jax.models import build_model, presets
from codevision_jax.sampling.engine import DecodeEngine


def _segment(model, rng, n_text, grid=None):
  c = model.config
  ids = list(rng.integers(1, 200, n_text))
  pv = None
  if grid is not None:
    merge = c.vision.spatial_merge_size
    ids += [c.vision_start_token_id] + [c.image_token_id] * (int(np.prod(grid)) // merge**2)
    ids += [c.vision_end_token_id] + list(rng.integers(1, 200, 2))
    pv = rng.standard_normal((int(np.prod(grid)), 3 * 2 * c.vision.patch_size**2)).astype(np.float32)
    grid = np.asarray([grid], np.int64)
  return np.asarray(ids, np.int32), pv, grid


@pytest.mark.parametrize(
  "family,page_size,append_entries",
  [("qwen2_5_vl", 0, 0), ("qwen3_vl", 0, 0), ("qwen2_5_vl", 8, 0), ("qwen2_5_vl", 0, 1)],
)
def test_batched_appends_equal_per_slot_appends(family, page_size, append_entries, monkeypatch):
  model = build_model(getattr(presets, f"{family}_tiny")(), seed=3)
  rng = np.random.default_rng(5)
  prompts = [_segment(model, rng, n, g) for n, g in ((9, (1, 4, 4)), (30, None), (5, (1, 2, 6)), (12, None))]
  # Tool turns due together: three slots (one without an image, one longer than a chunk).
  turns = {0: _segment(model, rng, 3, (1, 6, 4)), 1: _segment(model, rng, 40), 3: _segment(model, rng, 6, (1, 4, 2))}
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  results, groups = [], []
  rows = DecodeEngine._append_rows
  monkeypatch.setattr(DecodeEngine, "_append_rows", lambda self, r: (groups.append(len(r)), rows(self, r)))
  for batched in (False, True):
    e = DecodeEngine(model, chunk=16, page_size=page_size, append_entries=append_entries)
    e.allocate(4, 192)
    for slot, p in enumerate(prompts):
      e.append(slot, *p)
    if batched:
      groups.clear()
      e.append_many([(slot, *seg) for slot, seg in turns.items()])
      # Unbounded: 3 rows as 2 + 1 (2^k rows a call). Bounded below one row's span: 1 + 1 + 1.
      assert groups == ([1, 1, 1] if append_entries else [2, 1]), groups
    else:
      for slot, seg in turns.items():
        e.append(slot, *seg)
    logits, lengths = np.asarray(e.logits), e.lengths.copy()
    tokens, logprobs, n = jax.device_get(
      e.decode(np.ones(4, bool), np.full(4, 10), keys, np.zeros(4, np.int32), max_steps=10, temperature=1.0)
    )
    results.append((logits, lengths, tokens, logprobs, n))
  (l0, n0, t0, lp0, c0), (l1, n1, t1, lp1, c1) = results
  np.testing.assert_array_equal(n0, n1)
  np.testing.assert_allclose(l0, l1, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(c0, c1)
  np.testing.assert_array_equal(t0, t1)
  np.testing.assert_allclose(lp0, lp1, atol=1e-5)
