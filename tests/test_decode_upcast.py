"""A bfloat16 sampler's decode rounds on CPU run on a float32 copy of the cache entries they attend
over (`DecodeEngine.round_upcast`, the default there) and sample the very bits the bfloat16 cache
gives: tokens, log-probs, the pending logits and every valid cache entry, for a dense cache
attended whole or in part (a waiting slot longer than the span keeps its entries), a scanned
decoder, Qwen3-VL and a paged cache; the cache stays bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codevision_jax.sampling.engine import DecodeEngine
from codevision_jax.train.step import cast_floats
from test_paged_kv import _model, _segment


def _rounds(model, upcast: bool, capacity: int, page_size: int, long_waiting: bool, round_gather):
  e = DecodeEngine(
    model,
    chunk=16,
    params=cast_floats(nnx.state(model, nnx.Param), jnp.bfloat16),
    page_size=page_size,
    round_upcast=upcast,
    round_gather=round_gather,
  )
  e.allocate(3, capacity)
  rng = np.random.default_rng(0)
  e.append(0, *_segment(model, rng, 5, (1, 4, 6)))
  e.append(1, *_segment(model, rng, 30))
  e.append(2, *_segment(model, rng, 1100 if long_waiting else 12))
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  active = np.array([True, True, not long_waiting])
  counts, out = np.zeros(3, np.int32), []
  for i in range(3):
    tokens, logprobs, n = jax.device_get(
      e.decode(active, np.array([40, 9, 40]), keys, counts, max_steps=16, temperature=1.0)
    )
    out.append((tokens, logprobs, n))
    counts = counts + n.astype(np.int32)
    if i == 0:
      e.append(1, *_segment(model, rng, 4, (1, 2, 4)))  # A tool turn between rounds.
  assert {x.dtype for x in jax.tree.leaves(e.state.cache)} == {jnp.dtype(jnp.bfloat16)}
  lengths = e.lengths.copy()
  if page_size:  # Each slot's valid entries, through its pages.
    pages = e.pool.table
    entries = [
      np.asarray(x[pages[s]].swapaxes(0, 1).reshape(x.shape[1], -1, x.shape[-1]))[:, : lengths[s]]
      for x in jax.tree.leaves(e.state.cache)
      for s in range(3)
    ]
  else:
    entries = [np.asarray(x[..., s, :, : lengths[s], :]) for x in jax.tree.leaves(e.state.cache) for s in range(3)]
  return out, np.asarray(e.logits), lengths, entries, e.last_span


@pytest.mark.parametrize(
  "name,scan,capacity,page_size,round_gather,long_waiting",
  [
    ("qwen2_5_vl", False, 160, 0, None, False),  # The whole cache attended (177 entries).
    ("qwen2_5_vl", False, 1200, 0, None, True),  # 1024 of 1217 entries; slot 2 waits with 1100 tokens.
    ("qwen2_5_vl", True, 160, 0, None, False),  # A scanned decoder's stacked cache.
    ("qwen3_vl", False, 160, 0, None, False),
    ("qwen2_5_vl", False, 160, 8, True, False),  # Paged: the gathered pages' copy.
    ("qwen2_5_vl", False, 160, 8, False, False),  # Paged, gathering at every step: no copy made.
  ],
)
def test_a_float32_copy_of_a_bfloat16_cache_samples_the_same_bits(
  name, scan, capacity, page_size, round_gather, long_waiting
):
  model = _model(name, scan)
  assert DecodeEngine(model).round_upcast  # The default on CPU.
  plain, copied = (_rounds(model, upcast, capacity, page_size, long_waiting, round_gather) for upcast in (False, True))
  (out0, logits0, len0, entries0, span0), (out1, logits1, len1, entries1, span1) = plain, copied
  if long_waiting:
    assert span0 == span1 == 1024 and len0[2] > 1024
  np.testing.assert_array_equal(len0, len1)
  for (t0, lp0, n0), (t1, lp1, n1) in zip(out0, out1):
    np.testing.assert_array_equal(n0, n1)
    np.testing.assert_array_equal(t0, t1)
    np.testing.assert_array_equal(lp0, lp1)
  assert sum(n.sum() for _, _, n in out0) > 40  # The rounds sampled.
  np.testing.assert_array_equal(logits0, logits1)
  for a, b in zip(entries0, entries1, strict=True):
    np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32))
