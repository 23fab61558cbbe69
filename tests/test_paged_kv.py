"""The paged KV cache: page accounting; a paged engine samples the tokens and log-probs of the dense
one (appends with images, several slots, sampling and greedy; Qwen2.5-VL, Qwen3-VL and a scanned
decoder); a policy whose pool is too small for its slots preempts and resumes them with the
tokens a dense policy samples."""

import jax
import numpy as np
import pytest

from codevision_jax.models import build_model, presets
from codevision_jax.models.paged_kv import SCRATCH_PAGE
from codevision_jax.sampling.engine import DecodeEngine, PoolFull, paged_span
from codevision_jax.sampling.paged import PagePool
from codevision_jax.sampling.policy import ModelPolicy


def test_page_pool_hands_out_and_takes_back_pages():
  pool = PagePool(num_pages=9, page_size=4, num_slots=3, max_pages=4)
  assert pool.free_pages == 8 and pool.free_tokens == 32
  assert pool.reserve(0, 5) and pool.held.tolist() == [2, 0, 0]
  assert pool.reserve(1, 16) and pool.free_pages == 2
  assert not pool.reserve(2, 12) and pool.held[2] == 0 and pool.free_pages == 2  # all or nothing
  assert not pool.reserve(0, 17)  # past the slot's max_pages
  assert pool.reserve(0, 8) and pool.held[0] == 2  # already held: nothing new
  held = set(pool.table[:2][pool.table[:2] != SCRATCH_PAGE].tolist())
  assert len(held) == 6 and SCRATCH_PAGE not in held
  assert (pool.table[2] == SCRATCH_PAGE).all()
  entries = pool.write_entries(0, 3, 2, 4)
  assert entries.tolist() == [pool.table[0, 0] * 4 + 3, pool.table[0, 1] * 4, SCRATCH_PAGE * 4, SCRATCH_PAGE * 4]
  pool.release(1)
  assert pool.free_pages == 6 and (pool.table[1] == SCRATCH_PAGE).all()
  assert pool.reserve(2, 12) and pool.room(2) == 12


def test_paged_span_buckets():
  assert paged_span(10, 16, 100) == 1024
  assert paged_span(1025, 16, 100) == 1280
  assert paged_span(2080, 64, 1000) == 2560
  assert paged_span(4097, 64, 1000) == 5120
  assert paged_span(5000, 16, 100) == 1600  # at most the slot's pages


def _model(name, scan=False):
  cfg = {"qwen2_5_vl": presets.qwen2_5_vl_tiny, "qwen3_vl": presets.qwen3_vl_tiny}[name]()
  return build_model(cfg, seed=1, scan_layers=scan) if scan else build_model(cfg, seed=1)


def _segment(model, rng, n_text, grid=None):
  c = model.config
  ids = list(rng.integers(1, 200, n_text))
  pv = None
  if grid is not None:
    merge = c.vision.spatial_merge_size
    ids += [c.vision_start_token_id] + [c.image_token_id] * (int(np.prod(grid)) // merge**2)
    ids += [c.vision_end_token_id] + list(rng.integers(1, 200, 2))
    patch = c.vision.patch_size
    pv = rng.standard_normal((int(np.prod(grid)), 3 * 2 * patch * patch)).astype(np.float32)
    grid = np.asarray([grid], np.int64)
  return np.asarray(ids, np.int32), pv, grid


@pytest.mark.parametrize(
  "name,scan,round_gather",
  [("qwen2_5_vl", False, True), ("qwen3_vl", False, True), ("qwen2_5_vl", True, True), ("qwen2_5_vl", False, False)],
)
def test_a_paged_engine_samples_what_the_dense_one_does(name, scan, round_gather):
  """Decode rounds that gather their pages once (CPU's default) and at every step, per layer or
  with a scanned decoder, sample what the dense engine samples."""
  model = _model(name, scan)
  rng = np.random.default_rng(0)
  prompts = [
    [_segment(model, rng, 5, (1, 4, 6)), _segment(model, rng, 7)],
    [_segment(model, rng, 40)],
    [_segment(model, rng, 3, (1, 6, 2))],
  ]
  tool = _segment(model, rng, 4, (1, 2, 4))
  runs = []
  for page_size in (0, 8):
    e = DecodeEngine(model, chunk=16, page_size=page_size, round_gather=round_gather)
    e.allocate(3, 160, pool_tokens=3 * 100)
    for slot, segs in enumerate(prompts):
      for seg in segs:
        e.append(slot, *seg)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    out = [
      jax.device_get(
        e.decode(np.ones(3, bool), np.array([20, 12, 20]), keys, np.zeros(3, np.int32), max_steps=24, temperature=1.0)
      )
    ]
    e.append(1, *tool)  # A tool turn, then greedy rounds with one slot waiting.
    counts = out[0][2].astype(np.int32)
    for _ in range(2):
      out.append(jax.device_get(e.decode(np.array([True, True, False]), np.full(3, 9), keys, counts, max_steps=8)))
      counts = counts + out[-1][2]
    runs.append((out, np.asarray(e.logits), e.lengths.copy()))
    if page_size:
      assert e.last_span == 20 * 8  # the slot's whole table: 160 tokens
      pool = e.pool
      assert pool.free_pages == pool.num_pages - 1 - pool.held.sum()
      assert all(pool.held[s] >= pool.pages_for(n) for s, n in enumerate(e.lengths))
      e.reset(2)
      assert pool.held[2] == 0
  (dense, dense_logits, dense_len), (paged, paged_logits, paged_len) = runs
  np.testing.assert_array_equal(dense_len, paged_len)
  for (t0, lp0, n0), (t1, lp1, n1) in zip(dense, paged):
    np.testing.assert_array_equal(n0, n1)
    np.testing.assert_array_equal(t0, t1)
    np.testing.assert_allclose(lp0, lp1, atol=1e-5)
  np.testing.assert_allclose(dense_logits, paged_logits, atol=1e-4, rtol=1e-4)


def test_the_pool_holds_what_it_was_given_and_an_append_past_it_fails():
  model = _model("qwen2_5_vl")
  e = DecodeEngine(model, chunk=16, page_size=16)
  e.allocate(4, 32768, pool_tokens=256)
  tc = model.config.text
  for layer in e.state.cache:
    assert layer["k"].shape == (17, tc.num_key_value_heads, 16, tc.resolved_head_dim)
  e.append(0, np.arange(1, 201))
  with pytest.raises(PoolFull, match="kv_pool_tokens"):
    e.append(1, np.arange(1, 101))
  e.reset(0)
  e.append(1, np.arange(1, 101))
  assert e.pool.held.tolist() == [0, 7, 0, 0]


def test_a_small_pool_preempts_and_resumes_with_the_same_tokens():
  """Three slots whose trajectories outgrow a pool of 10 pages, driven as the agent loop drives
  them (a slot is asked for tokens until it has its share, then waits, as on a tool): slots
  are preempted (pages freed) and resumed by prefilling their conversation again (a tool turn
  with an image that came while paused included); every slot samples what it samples in a
  dense policy, each decode call serves a slot (no livelock), and finished slots give their
  pages back."""
  model = _model("qwen2_5_vl")
  rng = np.random.default_rng(2)
  prompts = [_segment(model, rng, n) for n in (20, 30, 25)]
  tools = [_segment(model, rng, 5, (1, 4, 4)) for _ in range(3)]

  def run(**paged):
    policy = ModelPolicy(
      model, stop_ids=[], num_slots=3, capacity=128, chunk=16, steps_per_call=8, temperature=1.0, seed=3, **paged
    )
    policy.start_many([(slot, slot, *p) for slot, p in enumerate(prompts)])
    rows = {s: ([], []) for s in range(3)}

    def until(n):
      for _ in range(3 * n):  # Each call serves a slot: 3 * n calls are more than enough.
        asked = [s for s in rows if len(rows[s][0]) < n]
        if not asked:
          return
        out = policy.decode(asked, [n - len(rows[s][0]) for s in asked])
        assert sum(len(t) for t, _ in out.values()) > 0, "a decode call served no slot"
        for s, (tokens, logprobs) in out.items():
          rows[s][0].extend(tokens.tolist())
          rows[s][1].extend(logprobs.tolist())
      raise AssertionError(f"slots did not reach {n} tokens")

    until(24)
    policy.append_many([(slot, *tools[slot]) for slot in range(3)])
    until(48)
    return policy, rows

  _, dense = run()
  policy, paged = run(page_size=16, pool_tokens=160)
  assert policy.preemptions >= 2
  for s in range(3):
    assert paged[s][0] == dense[s][0]
    np.testing.assert_allclose(paged[s][1], dense[s][1], atol=1e-4)
  pool = policy.engine.pool
  assert pool.free_pages + int(pool.held.sum()) == pool.num_pages - 1
  for s in range(3):
    policy.finish(s)
  assert pool.free_pages == pool.num_pages - 1 and not policy.paused and policy.can_admit()
