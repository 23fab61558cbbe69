"""The sampler: greedy parity with transformers' generate, reproducible sampling, top-k/top-p
support, log-probs equal to a teacher-forced forward, parameter swaps without recompiling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import codevision_jax as cvj
import hf_reference as H
from codevision_jax.sampling import Sampler
from codevision_jax.sampling import engine as sampling
from codevision_jax.sampling.logits import choose_tokens

IMG, VS, VE = (H.QWEN_SPECIAL_IDS[k] for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id"))
PAD = 0


def make_prompts(rng, rows, patch_size=14):
  """Left-padded prompts: per row a list of image grids (t, h, w), text around each image and a
  text tail (a chat prompt ends in text). Returns ids, mask, pixel_values, grid (or None)."""
  ids, mask, pv, grid = H.make_batch(rng, rows, 3 * 2 * patch_size**2, first_text_id=1, pad_id=PAD)
  return (ids, mask, pv, grid) if len(grid) else (ids, mask, None, None)


def hf_greedy(hf, ids, mask, pv, grid, max_new_tokens, stop_ids=None):
  """transformers' greedy generate; the new tokens, right-padded with PAD to max_new_tokens."""
  kwargs = {}
  if pv is not None:
    kwargs.update(pixel_values=torch.as_tensor(pv), image_grid_thw=torch.as_tensor(grid))
  with torch.no_grad():
    out = hf.generate(
      input_ids=torch.as_tensor(ids),
      attention_mask=torch.as_tensor(mask),
      mm_token_type_ids=torch.as_tensor((ids == IMG).astype(np.int64)),
      max_new_tokens=max_new_tokens,
      do_sample=False,
      pad_token_id=PAD,
      eos_token_id=stop_ids,
      **kwargs,
    )
  new = out[:, ids.shape[1] :].numpy()
  return np.pad(new, ((0, 0), (0, max_new_tokens - new.shape[1])), constant_values=PAD)


MODEL_TYPES = ["qwen2_5_vl", "qwen3_vl"]
ROWS = [[(1, 4, 4)], [(1, 6, 4)], []]  # two rows with an image of different sizes, one text-only


@functools.lru_cache(maxsize=None)
def _models(model_type):
  """A random transformers model, ours with its weights, and a left-padded batch of prompts."""
  hf = H.random_hf_model(H.tiny_hf_config(model_type), seed=1)
  patch = hf.config.vision_config.patch_size
  return hf, H.flax_from_hf(hf), make_prompts(np.random.default_rng(0), ROWS, patch)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_greedy_equals_transformers_generate(model_type):
  hf, ours, (ids, mask, pv, grid) = _models(model_type)
  n = 12
  free = hf_greedy(hf, ids, mask, pv, grid, n)
  # A stop token that row 0 emits at step 3 (and not before): rows then end at different steps.
  stop = int(free[0, 3])
  assert stop not in free[0, :3]
  expected = hf_greedy(hf, ids, mask, pv, grid, n, stop_ids=[stop])
  assert (expected[0, 4:] == PAD).all()
  tokens, logprobs = cvj.generate(ours, ids, pv, grid, mask, max_new_tokens=n, stop_token_ids=(stop,), pad_token_id=PAD)
  np.testing.assert_array_equal(np.asarray(tokens), expected)
  # Without a stop, the whole greedy continuation matches too.
  tokens, _ = cvj.generate(ours, ids, pv, grid, mask, max_new_tokens=n, pad_token_id=PAD)
  np.testing.assert_array_equal(np.asarray(tokens), free)
  # After a stop: pad tokens with log-prob 0.
  assert np.asarray(logprobs)[0, 4:].tolist() == [0.0] * (n - 4)


def test_sampling_reproducible_with_seed():
  _, model, (ids, mask, pv, grid) = _models("qwen2_5_vl")
  sampler = Sampler(model, pad_token_id=PAD)
  kw = dict(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95)
  a = sampler.generate(ids, pv, grid, mask, seed=7, **kw)
  b = sampler.generate(ids, pv, grid, mask, seed=7, **kw)
  c = sampler.generate(ids, pv, grid, mask, seed=8, **kw)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  assert (np.asarray(a[0]) != np.asarray(c[0])).any()
  # A random model is near uniform over 256 tokens: sampling is not greedy.
  greedy, _ = sampler.generate(ids, pv, grid, mask, max_new_tokens=10)
  assert (np.asarray(a[0]) != np.asarray(greedy)).any()
  # top_k=1 at any temperature is greedy.
  top1, _ = sampler.generate(ids, pv, grid, mask, max_new_tokens=10, temperature=1.5, top_k=1, seed=3)
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))


def _allowed(logits, temperature, top_k, top_p):
  """The support by the definition: top-k by value (ties kept), then the most likely tokens while
  the probability ranked above them is below top_p."""
  scaled = logits / temperature
  keep = np.ones_like(scaled, bool)
  if top_k > 0:
    keep &= scaled >= np.sort(scaled)[::-1][top_k - 1]
  if top_p < 1:
    masked = np.where(keep, scaled, -np.inf)
    probs = np.exp(masked - masked.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    above = np.cumsum(probs[order]) - probs[order]
    keep_p = np.zeros_like(keep)
    keep_p[order[above < top_p]] = True
    keep &= keep_p
  return set(np.flatnonzero(keep).tolist())


def test_top_k_top_p_restrict_the_support():
  rng = np.random.default_rng(0)
  logits = (2.0 * rng.standard_normal((3, 40))).astype(np.float32)
  draws = 3000
  keys = jax.random.split(jax.random.PRNGKey(0), draws)

  @jax.jit
  def sample(temperature, top_k, top_p):
    def one(key):
      return choose_tokens(
        jnp.asarray(logits), jax.random.split(key, 3), temperature, top_k, top_p, greedy=False, filtered=True
      )

    return jax.vmap(one)(keys)

  policy = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  for temperature, top_k, top_p in [(1.0, 5, 1.0), (1.0, 0, 0.6), (0.7, 8, 0.5), (2.0, 3, 0.9)]:
    tokens, logprobs = sample(np.float32(temperature), np.int32(top_k), np.float32(top_p))
    tokens = np.asarray(tokens)
    for row in range(3):
      allowed = _allowed(logits[row], temperature, top_k, top_p)
      assert 1 <= len(allowed) < 40
      # Every draw is in the support, and the support is fully reached.
      assert set(tokens[:, row].tolist()) == allowed, (temperature, top_k, top_p, row)
    # Log-probs are the policy's: temperature 1, unfiltered.
    expected = np.take_along_axis(policy[None].repeat(draws, 0), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(logprobs), expected, rtol=0, atol=1e-6)


def test_logprobs_equal_teacher_forced_forward():
  _, model, (ids, mask, pv, grid) = _models("qwen2_5_vl")
  n = 9
  sampler = Sampler(model, pad_token_id=PAD)
  free, _ = sampler.generate(ids, pv, grid, mask, max_new_tokens=n, temperature=0.8, top_k=30, seed=1)
  stop = int(np.asarray(free)[1, 4])
  tokens, logprobs = sampler.generate(
    ids, pv, grid, mask, max_new_tokens=n, temperature=0.8, top_k=30, seed=1, stop_token_ids=(stop, 255)
  )
  tokens, logprobs = np.asarray(tokens), np.asarray(logprobs)
  # Generated tokens count up to and including the first stop.
  is_stop = np.isin(tokens, [stop, 255])
  first = np.where(is_stop.any(1), is_stop.argmax(1), n - 1)
  generated = np.arange(n)[None] <= first[:, None]
  assert not generated.all() and (tokens[~generated] == PAD).all() and (logprobs[~generated] == 0).all()
  full_ids = np.concatenate([ids, tokens], axis=1)
  full_mask = np.concatenate([mask, generated.astype(mask.dtype)], axis=1)
  positions, meta = model.prepare(full_ids, grid, full_mask)
  forward = nnx.jit(lambda m, *args: m.forward(*args))
  logits = forward(model, jnp.asarray(full_ids), jnp.asarray(pv), meta, jnp.asarray(full_mask), jnp.asarray(positions))
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  p = ids.shape[1]
  teacher = np.take_along_axis(logp[:, p - 1 : p - 1 + n], tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(logprobs[generated], teacher[generated], rtol=0, atol=1e-5)


def test_update_params_on_device_without_recompiling():
  _, model, (ids, mask, pv, grid) = _models("qwen2_5_vl")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # New parameters made on device, as a trainer's update would be.
  new_params = jax.tree.map(lambda x: 1.2 * x, params)
  sampler = Sampler(model, pad_token_id=PAD)
  kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4)
  before, _ = sampler.generate(ids, pv, grid, mask, **kw)
  counts = dict(sampling.TRACE_COUNTS)
  assert counts["prefill"] >= 1 and counts["decode"] >= 1
  with jax.transfer_guard_device_to_host("disallow"):
    sampler.update_params(new_params)
    after, after_lp = sampler.generate(ids, pv, grid, mask, **kw)
  assert sampling.TRACE_COUNTS == counts
  assert (np.asarray(after) != np.asarray(before)).any()
  other = nnx.merge(graphdef, new_params, rest)
  fresh, fresh_lp = Sampler(other, pad_token_id=PAD).generate(ids, pv, grid, mask, **kw)
  np.testing.assert_array_equal(np.asarray(after), np.asarray(fresh))
  np.testing.assert_array_equal(np.asarray(after_lp), np.asarray(fresh_lp))
  # A shorter prompt in the same length bucket and another max_new_tokens: still no new trace.
  sampler.generate(ids[:, 1:], pv, grid, mask[:, 1:], **{**kw, "max_new_tokens": 5})
  assert sampling.TRACE_COUNTS == counts
  # A new batch size does trace (the counter sees compilations).
  sampler.generate(ids[::2], pv[:16], grid[:1], mask[::2], **kw)
  assert sampling.TRACE_COUNTS["decode"] == counts["decode"] + 1
  # A state that is not this architecture's parameters is refused.
  with pytest.raises(ValueError, match="bfloat16"):
    sampler.update_params(jax.tree.map(lambda x: x.astype(jnp.bfloat16), new_params))
