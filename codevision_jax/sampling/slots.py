"""Per-slot KV cache for the agent loop: chunked prefill into one slot, batched decode of many.

A `SlotCache` holds `num_slots` independent sequences (trajectories) in one static cache
[B, K, L, D] per layer. Each slot has its own length (tokens in its cache), its own M-RoPE
counter (the next text position: the maximum position so far plus one, as `get_rope_index`
advances it) and its own pending logits (the distribution of its next token).

* `append(slot, ids, pixel_values, grid)` encodes the images with the vision tower, embeds the
  segment and runs the decoder over it in fixed-size chunks written at the slot's length. The
  positions of the segment are `get_rope_index` of the segment alone plus the slot's counter,
  which is exactly what `get_rope_index` gives for the whole conversation (the counter only
  depends on what came before). So the logits after appending equal a from-scratch forward.
* `decode(slots, max_steps, ...)` samples for the given slots in one on-device while_loop (every
  slot's row computes; rows not asked for, or done, write to a scratch cache entry and keep their
  state). Each sampled token is fed back (a stop token too), so after a round the cache holds
  everything sampled and the pending logits follow the last token.

Cache layout: slots [0, capacity) hold tokens; chunked prefill may write up to `chunk` entries
past the length (they are never valid keys); the last entry is the scratch entry.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codevision_jax.models import prepare

from codevision_jax.sampling.logits import choose_tokens, policy_logprobs
from codevision_jax.sampling.sampler import prompt_bucket


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _embed(graphdef, params, rest, input_ids, pixel_values, vision_meta):
  """Segment [1, T] -> embeddings [1, T, H] and DeepStack inputs (or None)."""
  model = nnx.merge(graphdef, params, rest)
  return model.embed(input_ids, pixel_values, vision_meta)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache", "logits"))
def _prefill_chunk(graphdef, params, rest, cache, logits, slot, start, embeds, positions, valid,
                   deepstack):
  """Runs one chunk [1, C] of a slot at cache index `start`; the first `valid` entries are real.

  Updates that slot's cache row and, when the chunk holds the segment's last token
  (`valid` > 0), its pending logits from hidden state `valid - 1`.
  """
  model = nnx.merge(graphdef, params, rest)
  lm = model.model.language_model
  c = embeds.shape[1]
  length = cache[0]["k"].shape[2]
  row = [{k: jax.lax.dynamic_slice_in_dim(v, slot, 1, axis=0) for k, v in layer.items()}
         for layer in cache]
  keys = jnp.arange(length)
  queries = start + jnp.arange(c)
  mask = (keys[None, :] <= queries[:, None])[None, None]
  hidden, row = lm(embeds, positions, mask, kv_cache=row, cache_index=start, deepstack=deepstack)
  cache = [{k: jax.lax.dynamic_update_slice_in_dim(cache[i][k], row[i][k], slot, axis=0)
            for k in ("k", "v")} for i in range(len(cache))]
  last = model.logits(jax.lax.dynamic_index_in_dim(hidden[0], jnp.maximum(valid - 1, 0), 0,
                                                   keepdims=False))
  new = jnp.where(valid > 0, last.astype(logits.dtype), logits[slot])
  return cache, logits.at[slot].set(new)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_steps", "greedy", "filtered"),
                   donate_argnames=("cache", "logits"))
def _decode(graphdef, params, rest, cache, logits, lengths, counters, active, budget, keys, counts,
            temperature, top_k, top_p, stop_ids, banned_ids, *, max_steps: int, greedy: bool,
            filtered: bool):
  """Up to `max_steps` tokens for each active row, until a stop token or its `budget`.

  Tokens in `banned_ids` (image pads, vision markers: only the environment places them) are never
  sampled; the log-probs stay those of the unrestricted policy, as the training forward sees it.

  Returns tokens, log-probs [B, max_steps], the number sampled per row, and the updated cache,
  logits, lengths and counters.
  """
  model = nnx.merge(graphdef, params, rest)
  lm = model.model.language_model
  b = lengths.shape[0]
  length = cache[0]["k"].shape[2]
  scratch = length - 1
  slots = jnp.arange(length)

  def row_step(embeds, position, row_cache, index, key_ok):
    row_cache = [{k: v[None] for k, v in layer.items()} for layer in row_cache]
    hidden, row_cache = lm(embeds[None], position[:, None], key_ok[None, None, None], kv_cache=row_cache,
                           cache_index=index)
    return hidden[0], [{k: v[0] for k, v in layer.items()} for layer in row_cache]

  def cond(state):
    step, done = state[0], state[4]
    return (step < max_steps) & ~jnp.all(done)

  def body(state):
    step, cache, logits, n, done, lengths, counters, tokens, logprobs = state
    step_keys = jax.vmap(jax.random.fold_in)(keys, counts + n)
    vocab = jnp.arange(logits.shape[-1])
    allowed = ~jnp.any(vocab[:, None] == banned_ids[None, :], axis=-1)
    tok, _ = choose_tokens(jnp.where(allowed, logits, -jnp.inf), step_keys, temperature, top_k,
                           top_p, greedy=greedy, filtered=filtered)
    lp = policy_logprobs(logits, tok)
    live = ~done
    tokens = tokens.at[:, step].set(jnp.where(live, tok, 0))
    logprobs = logprobs.at[:, step].set(jnp.where(live, lp, 0.0))
    index = jnp.where(live, lengths, scratch)
    key_ok = (slots[None, :] <= index[:, None]) & live[:, None]
    key_ok = key_ok | ~live[:, None]  # Idle rows attend to anything: their output is dropped.
    position = jnp.broadcast_to(counters[None, :, None], (3, b, 1))
    embeds = lm.embed_tokens(tok[:, None])
    hidden, cache = jax.vmap(row_step, in_axes=(0, 1, 0, 0, 0), out_axes=(0, 0))(
        embeds, position, cache, index, key_ok)
    new_logits = model.logits(hidden[:, -1]).astype(logits.dtype)
    logits = jnp.where(live[:, None], new_logits, logits)
    lengths = lengths + live
    counters = counters + live
    n = n + live
    stopped = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    done = done | (live & stopped) | (n >= budget)
    return step + 1, cache, logits, n, done, lengths, counters, tokens, logprobs

  done = ~active | (budget <= 0)
  state = (jnp.asarray(0, jnp.int32), cache, logits, jnp.zeros((b,), jnp.int32), done, lengths,
           counters, jnp.zeros((b, max_steps), jnp.int32), jnp.zeros((b, max_steps), jnp.float32))
  _, cache, logits, n, _, lengths, counters, tokens, logprobs = jax.lax.while_loop(cond, body, state)
  return tokens, logprobs, n, cache, logits, lengths, counters


class SlotCache:
  """The device state of `num_slots` sequences and the host bookkeeping of their lengths."""

  def __init__(self, model: nnx.Module, num_slots: int, capacity: int, *, chunk: int = 64,
               params: nnx.State | None = None):
    self._graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)
    if params is not None:
      self._params = params
    self.config = model.config
    self.num_slots, self.capacity, self.chunk = num_slots, capacity, chunk
    tc = self.config.text
    shape = (num_slots, tc.num_key_value_heads, capacity + chunk + 1, tc.resolved_head_dim)
    dtype = jax.tree.leaves(self._params)[0].dtype
    self.cache = [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                  for _ in range(tc.num_hidden_layers)]
    self.logits = jnp.zeros((num_slots, tc.vocab_size), jnp.float32)
    self.lengths = np.zeros((num_slots,), np.int32)
    self.counters = np.zeros((num_slots,), np.int32)

  def update_params(self, params: nnx.State) -> None:
    self._params = params

  def reset(self, slot: int) -> None:
    """Empties a slot (its stale cache entries are never valid keys again)."""
    self.lengths[slot] = 0
    self.counters[slot] = 0

  def append(self, slot: int, input_ids, pixel_values=None, image_grid_thw=None) -> None:
    """Prefills a segment (text with expanded image pads, and its images) after the slot's
    content; see the module docstring."""
    ids = np.asarray(input_ids, np.int32).reshape(-1)
    n = len(ids)
    if n == 0:
      return
    start = int(self.lengths[slot])
    if start + n > self.capacity:
      raise ValueError(f"slot {slot}: {start} + {n} tokens exceed the capacity {self.capacity}")
    grid = None if image_grid_thw is None or len(image_grid_thw) == 0 else np.asarray(image_grid_thw)
    prepare.check_image_tokens(self.config, ids[None], pixel_values if grid is not None else None, grid)
    positions, meta = prepare.prepare(self.config, ids[None], grid)
    positions = positions + self.counters[slot]
    bucket = prompt_bucket(n)
    padded = np.zeros((1, bucket), np.int32)
    padded[0, :n] = ids
    pv = None if grid is None else jnp.asarray(pixel_values)
    embeds, deepstack = _embed(self._graphdef, self._params, self._rest, padded, pv, meta)
    positions = np.pad(positions, ((0, 0), (0, 0), (0, bucket - n)))
    c = self.chunk
    for lo in range(0, n, c):
      hi = min(lo + c, n)
      piece = slice(lo, lo + c)
      e = embeds[:, piece]
      width = e.shape[1]
      pos = positions[:, :, piece]
      ds = None
      if deepstack is not None:
        ds = (deepstack[0][:, piece], [f[:, piece] for f in deepstack[1]])
      if width < c:  # Pad the last chunk to the static chunk size.
        e = jnp.pad(e, ((0, 0), (0, c - width), (0, 0)))
        pos = np.pad(pos, ((0, 0), (0, 0), (0, c - width)))
        if ds is not None:
          ds = (jnp.pad(ds[0], ((0, 0), (0, c - width))),
                [jnp.pad(f, ((0, 0), (0, c - width), (0, 0))) for f in ds[1]])
      valid = hi - lo if hi == n else 0
      self.cache, self.logits = _prefill_chunk(
          self._graphdef, self._params, self._rest, self.cache, self.logits, np.int32(slot),
          np.int32(start + lo), e, jnp.asarray(pos, jnp.int32), np.int32(valid), ds)
    self.lengths[slot] = start + n
    self.counters[slot] = int(positions[:, 0, :n].max()) + 1

  def decode(self, active, budget, keys, counts, *, max_steps: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids=(), banned_ids=()):
    """Samples for the rows where `active` [B] is set; see `_decode`. Returns numpy tokens,
    log-probs [B, max_steps] and counts [B]."""
    stops = np.full((8,), -1, np.int32)
    stops[:len(stop_ids)] = list(stop_ids)
    banned = np.full((8,), -1, np.int32)
    banned[:len(banned_ids)] = list(banned_ids)
    budget = np.minimum(np.asarray(budget, np.int32), self.capacity - self.lengths)
    tokens, logprobs, n, self.cache, self.logits, lengths, counters = _decode(
        self._graphdef, self._params, self._rest, self.cache, self.logits, self.lengths,
        self.counters, np.asarray(active, bool), budget.astype(np.int32), keys,
        np.asarray(counts, np.int32), np.float32(temperature), np.int32(top_k), np.float32(top_p),
        stops, banned, max_steps=max_steps, greedy=temperature == 0,
        filtered=temperature > 0 and (top_k > 0 or top_p < 1))
    self.lengths = np.array(lengths)
    self.counters = np.array(counters)
    return np.asarray(tokens), np.asarray(logprobs), np.asarray(n)

