"""The decode engine's slots: incremental appends into a slot's cache give the logits of a
from-scratch forward over the whole conversation (ours vs ours), for Qwen2.5-VL and Qwen3-VL; and
batched decode of several slots equals decoding each conversation on its own."""

import jax
import numpy as np
import pytest

from codevision_jax.models import build_model, presets
from codevision_jax.sampling.engine import DecodeEngine

FAMILIES = {"qwen2_5_vl": presets.qwen2_5_vl_tiny, "qwen3_vl": presets.qwen3_vl_tiny}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request):
  return build_model(FAMILIES[request.param](), seed=1)


def engine(model, num_slots, capacity, chunk):
  out = DecodeEngine(model, chunk=chunk)
  out.allocate(num_slots, capacity)
  return out


def _segment(model, rng, n_text, grid=None):
  """Text tokens, then optionally an image block (start, pads, end) and two more text tokens."""
  c = model.config
  ids = list(rng.integers(1, 200, n_text))
  pv = None
  if grid is not None:
    merge = c.vision.spatial_merge_size
    ids += [c.vision_start_token_id] + [c.image_token_id] * (int(np.prod(grid)) // merge**2)
    ids += [c.vision_end_token_id] + list(rng.integers(1, 200, 2))
    patch = c.vision.patch_size
    pv = rng.standard_normal((int(np.prod(grid)), 3 * 2 * patch * patch)).astype(np.float32)
  return np.asarray(ids, np.int32), pv, grid


def _full_logits(model, segments):
  ids = np.concatenate([s[0] for s in segments])[None]
  grids = [s[2] for s in segments if s[2] is not None]
  pvs = [s[1] for s in segments if s[1] is not None]
  if grids:
    out = model(ids, np.concatenate(pvs), np.asarray(grids, np.int64))
  else:
    out = model(ids)
  return np.asarray(out[0])


def test_appends_match_a_full_forward(model):
  rng = np.random.default_rng(0)
  # A prompt with an image, an assistant turn (text), a tool turn with a differently shaped image
  # (its positions jump by max(h, w) / merge), then more text spanning several chunks.
  segments = [
    _segment(model, rng, 5, (1, 4, 6)),
    _segment(model, rng, 7),
    _segment(model, rng, 3, (1, 6, 2)),
    _segment(model, rng, 40),
  ]
  cache = engine(model, num_slots=3, capacity=256, chunk=16)
  # Fill slot 0 with something else first: slots must not see each other.
  cache.append(0, rng.integers(1, 200, 30))
  full = _full_logits(model, segments)
  done = 0
  for ids, pv, grid in segments:
    cache.append(1, ids, pv, None if grid is None else np.asarray([grid], np.int64))
    done += len(ids)
    np.testing.assert_allclose(np.asarray(cache.logits[1]), full[done - 1], atol=2e-4, rtol=1e-4)
  assert cache.lengths[1] == done


def test_batched_decode_equals_single_slot_forward(model):
  rng = np.random.default_rng(1)
  prompts = [
    [_segment(model, rng, 4, (1, 4, 4)), _segment(model, rng, 3)],
    [_segment(model, rng, 9)],
    [_segment(model, rng, 2, (1, 2, 6))],
  ]
  cache = engine(model, num_slots=4, capacity=128, chunk=16)
  for slot, segs in enumerate(prompts):
    for ids, pv, grid in segs:
      cache.append(slot, ids, pv, None if grid is None else np.asarray([grid], np.int64))
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  active = np.array([True, True, False, False])  # Slot 2 waits (e.g. on a tool call).
  budget = np.array([6, 3, 6, 0])
  tokens, logprobs, n = jax.device_get(cache.decode(active, budget, keys, np.zeros(4, np.int32), max_steps=8))
  assert n.tolist() == [6, 3, 0, 0]
  for slot in (0, 1):
    generated = tokens[slot, : n[slot]]
    segs = prompts[slot] + [(generated.astype(np.int32), None, None)]
    full = _full_logits(model, segs)
    prompt_len = sum(len(s[0]) for s in prompts[slot])
    # Greedy: each token is the argmax of the full forward at the previous position.
    np.testing.assert_array_equal(generated, full[prompt_len - 1 : -1].argmax(-1))
    lp = jax.nn.log_softmax(full[prompt_len - 1 : -1], -1)
    np.testing.assert_allclose(
      logprobs[slot, : n[slot]], np.take_along_axis(np.asarray(lp), generated[:, None], 1)[:, 0], atol=2e-4
    )
    np.testing.assert_allclose(np.asarray(cache.logits[slot]), full[-1], atol=2e-4, rtol=1e-4)
  # The waiting slot is untouched and resumes with an append.
  ids, pv, grid = _segment(model, rng, 3, (1, 4, 2))
  cache.append(2, ids, pv, np.asarray([grid], np.int64))
  full = _full_logits(model, prompts[2] + [(ids, pv, grid)])
  np.testing.assert_allclose(np.asarray(cache.logits[2]), full[-1], atol=2e-4, rtol=1e-4)


def test_attention_reads_the_filled_prefix_with_the_same_tokens(model):
  """A decode round attends over the cache up to the longest active slot plus the round's tokens,
  rounded to 1024 x 4^k entries, not the capacity: an engine of 6,000 tokens per slot samples the
  tokens and log-probs of one whose whole cache is that short."""
  rng = np.random.default_rng(3)
  prompts = [rng.integers(1, 200, n) for n in (7, 30, 12)]
  big, small = engine(model, 3, 6000, 16), engine(model, 3, 112, 16)
  out = []
  for e in (big, small):
    for slot, p in enumerate(prompts):
      e.append(slot, p)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    tokens, logprobs, n = e.decode(
      np.ones(3, bool), np.full(3, 40), keys, np.zeros(3, np.int32), max_steps=48, temperature=1.0
    )
    out.append((np.asarray(tokens), np.asarray(logprobs), np.asarray(n)))
  assert big.last_span == 1024 and small.last_span == 112 + 16 + 1  # The small one's whole cache.
  np.testing.assert_array_equal(out[0][0], out[1][0])
  np.testing.assert_array_equal(out[0][2], out[1][2])
  np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-5)
  # A slot past 1,024 tokens widens the window to the next span, and decoding goes on from it.
  big.append(0, rng.integers(1, 200, 1100))
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  big.decode(np.asarray([True, False, False]), np.full(3, 4), keys, np.zeros(3, np.int32), max_steps=8, temperature=0.0)
  assert big.last_span == 4096


def test_a_yield_token_ends_the_round_for_every_slot_without_changing_tokens(model):
  """A slot that samples a yield id (`</tool_call>` in the agent loop) ends the decode call after
  that step, so its tool runs at once; the other slots go on in the next call, with the tokens
  they would have sampled in one long call."""
  rng = np.random.default_rng(4)
  prompts = [rng.integers(1, 200, n) for n in (6, 11)]
  keys = jax.random.split(jax.random.PRNGKey(2), 2)

  def run(yield_ids):
    e = engine(model, 2, 64, 16)
    for slot, p in enumerate(prompts):
      e.append(slot, p)
    rows, counts = [[], []], np.zeros(2, np.int32)
    calls = 0
    while counts.min() < 12:
      tokens, _, n = e.decode(
        np.ones(2, bool), 12 - counts, keys, counts, max_steps=12, temperature=1.0, yield_ids=yield_ids
      )
      tokens, n = np.asarray(tokens), np.asarray(n)
      for r in range(2):
        rows[r] += tokens[r, : n[r]].tolist()
      counts, calls = counts + n, calls + 1
    return rows, calls

  straight, one_call = run(())
  assert one_call == 1
  third = straight[0][2]  # Slot 0's third token: the round ends right after it.
  rows, calls = run((third,))
  assert rows == straight and calls >= 2
