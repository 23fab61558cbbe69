"""The decode engine: `num_slots` sequences in one static key/value cache, prefill into slots, and
batched decoding on device. `Sampler.generate` (a batch of prompts) and the agent loop's policy
(trajectories that come and go, with tool turns appended between decode rounds) both run on it.

    engine = DecodeEngine(model, chunk=128)
    engine.allocate(num_slots=32, capacity=16384)
    engine.append(slot, input_ids, pixel_values, image_grid_thw)    # chunked prefill of one slot
    tokens, logprobs, counts = engine.decode(active, budgets, keys, counts, max_steps=32)

State, on device (`DecodeState`): per layer a cache [S, K, L, D] of S slots (one stacked
[layers, S, K, L, D] for a decoder with `scan_layers`) in the dtype of the engine's parameters
(bfloat16 for a bfloat16 sampler), the pending logits
[S, V] (each slot's next-token distribution), each slot's length (tokens in its cache) and its
M-RoPE counter (the next text position: the maximum position so far plus one, as
`get_rope_index` advances it). A slot's tokens sit at cache entries [0, length); the next
`chunk` entries take the padding of a chunked prefill (never valid keys) and the last entry is a
scratch entry that idle rows write to, so L = capacity + chunk + 1.

Prefill. A segment (text with expanded image pads, and its images) goes after a slot's content:
its positions are `get_rope_index` of the segment alone plus the slot's counter, which is what
`get_rope_index` gives for the whole conversation (the counter depends only on what came
before), so the logits after an append equal a from-scratch forward. `append` embeds the segment
(vision tower included) once and runs the decoder over it in `chunk`-token pieces (one
compilation for every segment length); `prefill` fills every slot from empty in one batched call
(`generate`'s prompts).

Attention reads the cache only up to what a call can need: the longest active slot's tokens plus
the call's new ones, rounded up to 1024 x 4^k entries (`attention_span`: a few compilations), so
a decode step over short trajectories in a 32k-token cache costs what their lengths cost.

Decode. One on-device while_loop samples for the active slots until each has a stop token or its
budget (or `max_steps` pass). Every sampled token, a stop token too, is fed back, so after a
round the cache holds everything sampled and the pending logits follow the last token. Each row
writes its key/value at its own length; rows not asked for, or done, write to the scratch entry.
Banned ids (image pads, vision markers: only the environment places them) are never sampled; the
log-probs stay those of the unrestricted policy at temperature 1 (see `logits`). On CPU a round
over a bfloat16 cache runs on a float32 copy of the entries it attends over (`round_upcast`: XLA's
CPU dots convert bfloat16 operands at every step), with the same bits as the bfloat16 cache gives.

Sharding. When the parameters live on a mesh (`NamedSharding`), the cache is created sharded on it
and kept so by every prefill and decode: slots over the batch axes (`data`, `fsdp`), KV heads over
`tensor`, by the logical-axis rules (`parallel.DEFAULT_RULES` unless given); an axis that does not
divide its dimension is replicated. A 7B sampler's cache of 64 slots x 32k tokens is 120 GB in
bfloat16: it must never be whole on one device.

Stop and banned ids travel as arrays padded to a multiple of `ID_SLOTS` entries; they, the
sampling settings, the budgets and the parameters are traced: changing them does not recompile.
Compilations are shared by every engine of the same architecture.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from codevision_jax import parallel
from codevision_jax.models import paged_kv, prepare
from codevision_jax.models.text import cache_entries, cache_slot_axis, init_kv_cache
from codevision_jax.models.vlm import image_feature_index, place_image_features
from codevision_jax.sampling.logits import choose_tokens, policy_logprobs
from codevision_jax.sampling.paged import PagePool

ID_SLOTS = 8

TRACE_COUNTS = {"prefill": 0, "decode": 0, "vision": 0}
"""How many times each jitted function was traced (a Python side effect at trace time)."""


def prompt_bucket(length: int) -> int:
  """Powers of two from 16 to 256, then multiples of 256."""
  if length <= 256:
    return max(16, 1 << (max(length, 1) - 1).bit_length())
  return -(-length // 256) * 256


SPAN_BASE, SPAN_GROWTH = 1024, 4


def attention_span(needed: int, entries: int) -> int:
  """The cache entries a call attends over: `needed` rounded up to 1024 x 4^k (few
  compilations: 1k, 4k, 16k, 64k), and at most every entry."""
  span = SPAN_BASE
  while span < needed:
    span *= SPAN_GROWTH
  return min(span, entries)


PAGE_SPAN_BASE = 1024
PAGE_SPAN_STEPS = (4, 5, 6, 7)  # quarters of an octave


CPU_APPEND_ENTRIES = 4096  # `DecodeEngine.append_entries` on CPU: 4 rows at 1k entries, 1 at 4k.


def paged_span(needed: int, page_size: int, max_pages: int) -> int:
  """The entries a call over a paged cache attends over: `needed` rounded up to 1024 x 2^k x
  (1, 1.25, 1.5 or 1.75), whole pages, at most `max_pages` pages. Gathering pages costs what
  attending costs, so the steps are finer than `attention_span`'s (4 compilations an octave)."""
  span, octave = PAGE_SPAN_BASE, PAGE_SPAN_BASE
  while span < needed:
    for step in PAGE_SPAN_STEPS[1:] + (8,):
      span = octave * step // 4
      if span >= needed:
        break
    octave *= 2
  return min(-(-span // page_size), max_pages) * page_size


class PoolFull(ValueError):
  """The paged cache has no free pages for a slot's tokens (the caller may free or preempt)."""


def id_array(ids: Sequence[int]) -> np.ndarray:
  """Token ids padded with -1 to a multiple of `ID_SLOTS` entries (at least one multiple)."""
  ids = [int(i) for i in ids]
  out = np.full((max(ID_SLOTS, -(-len(ids) // ID_SLOTS) * ID_SLOTS),), -1, np.int32)
  out[: len(ids)] = ids
  return out


@struct.dataclass
class DecodeState:
  cache: list | dict  # per layer {"k", "v"} [S, K, L, D]; scanned decoder: {"k", "v"} [layers, S, K, L, D]
  logits: jax.Array  # [S, V] float32
  lengths: jax.Array  # [S] int32
  counters: jax.Array  # [S] int32
  pages: jax.Array | None = None  # a paged cache's page table [S, max_pages] int32 (`PagePool`)


def cache_logical_axes(stacked: bool, paged: bool = False) -> tuple:
  """The logical axes of a cache array (`text.init_kv_cache`'s layout; `paged_kv.init_pool`'s
  with `paged`: pages over the batch axes)."""
  del paged  # [pages, K, page_size, D]: the dense cache's axes, pages in the place of slots.
  axes = ("batch", "kv_heads", None, None)
  return ("layers",) + axes if stacked else axes


def _constrain(cache, sharding):
  """`cache` with every array constrained to `sharding` (None: left to XLA)."""
  if sharding is None:
    return cache
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), cache)


def _slot_index(cache, slots) -> tuple:
  """The index of rows `slots` in a cache's arrays, in either form (`text.init_kv_cache`)."""
  return (slice(None),) * cache_slot_axis(cache) + (slots,)


def _take_slots(cache, slots, span: int = 0):
  """The rows `slots` of a cache in either form: their first `span` entries (0: all)."""
  index = _slot_index(cache, slots) + ((slice(None), slice(0, span)) if span else ())
  return jax.tree.map(lambda v: v[index], cache)


def _put_entries(cache, rows, slots, start, count: int):
  """`cache` with the entries start[r] .. start[r] + count - 1 of its rows `slots` taken from
  `rows` (`_take_slots`' form): what a call wrote, not whole rows (a scatter of whole rows costs
  their capacity on every call)."""
  lead = (slice(None),) * cache_slot_axis(cache)
  entries = start[:, None] + jnp.arange(count)  # [R, C]
  at = lead + (slots[:, None], slice(None), entries)
  new = lead + (jnp.arange(len(slots))[:, None], slice(None), entries)
  return jax.tree.map(lambda v, r: v.at[at].set(r[new], unique_indices=True), cache, rows)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _vision(graphdef, params, rest, pixel_values, vision_meta):
  """The vision tower over patches [N, C*T*P*P] (N: a `patch_bucket`) -> (features, DeepStack
  features)."""
  TRACE_COUNTS["vision"] += 1
  return nnx.merge(graphdef, params, rest).model.visual(pixel_values, vision_meta)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _embed(graphdef, params, rest, input_ids, vision):
  """Tokens [R, T] -> embeddings [R, T, H] and DeepStack inputs (or None), the k-th image token
  taking row k of the features `vision` (`_vision`'s output, or None): the model's `embed` with
  its tower run apart."""
  model = nnx.merge(graphdef, params, rest)
  embeds = model.model.language_model.embed_tokens(input_ids)
  if vision is None:
    return embeds, None
  features, deepstack_features = vision
  image_index = image_feature_index(input_ids == model.config.image_token_id)
  embeds = place_image_features(embeds, image_index, features)
  if not deepstack_features:
    return embeds, None
  return embeds, (
    image_index >= 0,
    [place_image_features(jnp.zeros_like(embeds), image_index, f) for f in deepstack_features],
  )


PATCH_BUCKET_BASE = 64


def patch_bucket(n: int) -> int:
  """Patches the vision tower runs on for `n` real ones: 64 x 2^k or 96 x 2^k (two compilations
  an octave; at most 1.5x the work)."""
  bucket = PATCH_BUCKET_BASE
  while bucket < n:
    if bucket * 3 // 2 >= n:
      return bucket * 3 // 2
    bucket *= 2
  return bucket


def padded_vision_inputs(config, pixel_values, image_grid_thw):
  """Pixel values padded to `patch_bucket` rows with one padding image of zeros (grid (1, merge,
  n / merge), as `data.pack` pads), and the tower's metadata with spans that depend on the
  bucket only: the tower compiles once per bucket, and the real images' features are unchanged
  (the padding image is its own attention segment; no token takes its features)."""
  grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
  pixels = np.asarray(pixel_values)
  n = len(pixels)
  bucket = patch_bucket(n)
  merge = config.vision.spatial_merge_size
  if bucket > n:
    grid = np.concatenate([grid, [[1, merge, (bucket - n) // merge]]])
    pixels = np.concatenate([pixels, np.zeros((bucket - n, pixels.shape[1]), pixels.dtype)])
  meta = prepare.vision_metadata(config, grid)
  span = prepare.span_bound(bucket)
  meta = meta.replace(full_span=span, window_span=meta.window_span if config.vision.window_size else span)
  return pixels, meta


def _run_vision(engine, pixel_values, image_grid_thw):
  """`_vision` over the padded inputs (None without images)."""
  if image_grid_thw is None:
    return None
  pixels, meta = padded_vision_inputs(engine.config, pixel_values, image_grid_thw)
  return _vision(engine._graphdef, engine._params, engine._rest, jnp.asarray(pixels), meta)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "all_slots", "cache_sharding", "span", "page_size"), donate_argnames=("state",)
)
def _prefill(
  graphdef,
  params,
  rest,
  state: DecodeState,
  slots,
  embeds,
  deepstack,
  positions,
  n_real,
  last,
  advance,
  write=None,
  *,
  all_slots: bool,
  cache_sharding=None,
  span: int = 0,
  page_size: int = 0,
) -> DecodeState:
  """Runs the decoder over `embeds` [R, C, H] of `slots` [R], written at each slot's length.

  positions [3, R, C] count from the slot's counter; n_real [R]: real tokens of the chunk (the rest
  is padding, written past the new length); last [R]: the chunk index of the segment's last token
  (its logits become the slot's pending logits), or -1 when the segment goes on in a later chunk;
  advance [R]: added to the slot's counter. `all_slots`: `slots` is every slot in order. `span`:
  attention reads the first `span` cache entries (0: all), which must hold every slot's tokens.
  A paged cache (`page_size` > 0) takes `write` [R, C]: the flat pool entry of each token.
  """
  TRACE_COUNTS["prefill"] += 1
  model = nnx.merge(graphdef, params, rest)
  c = embeds.shape[1]
  start = state.lengths[slots]
  if page_size:
    rows, index = state.cache, paged_kv.PagedIndex(write, state.pages[slots, : span // page_size])
  else:
    rows, index = (state.cache if all_slots else _take_slots(state.cache, slots, span)), start
  entries = jnp.arange(span or cache_entries(rows))
  mask = entries[None, None, :] <= (start[:, None] + jnp.arange(c))[:, :, None]  # [R, C, span]
  positions = positions + state.counters[slots][None, :, None]
  hidden, rows = model.extend(embeds, positions, mask[:, None], rows, index, deepstack)
  cache = rows if all_slots or page_size else _put_entries(state.cache, rows, slots, start, c)
  cache = _constrain(cache, cache_sharding)
  at_last = jnp.take_along_axis(hidden, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]
  new = model.logits(at_last).astype(state.logits.dtype)
  logits = state.logits.at[slots].set(jnp.where((last >= 0)[:, None], new, state.logits[slots]))
  return state.replace(
    cache=cache,
    logits=logits,
    lengths=state.lengths.at[slots].add(n_real),
    counters=state.counters.at[slots].add(advance),
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    "graphdef",
    "max_steps",
    "greedy",
    "filtered",
    "cache_sharding",
    "span",
    "page_size",
    "round_gather",
    "round_upcast",
  ),
  donate_argnames=("state",),
)
def _decode(
  graphdef,
  params,
  rest,
  state: DecodeState,
  active,
  budget,
  capacity,
  keys,
  counts,
  temperature,
  top_k,
  top_p,
  stop_ids,
  banned_ids,
  yield_ids,
  *,
  max_steps: int,
  greedy: bool,
  filtered: bool,
  cache_sharding=None,
  span: int = 0,
  page_size: int = 0,
  round_gather: bool = False,
  round_upcast: bool = False,
):
  """Up to `max_steps` tokens for each active row, until a stop token or its budget (at most the
  room left in its slot); the whole call ends after the step in which some row sampled one of
  `yield_ids` (a tool call to serve now: the other rows go on in the next call). Row r samples
  with `fold_in(keys[r], counts[r] + k)` for its k-th token of this call. Returns tokens and
  log-probs [S, max_steps] (0 past each row's count), the number sampled per row, and the new
  state. Attention reads the first `span` cache entries (0: all), which must hold every active
  row's tokens after `max_steps` more; idle rows write to the scratch entry past them (a paged
  cache, `page_size` > 0: to the scratch page; the caller's budgets keep rows within their pages).
  `round_gather` (paged): the rows' pages are gathered once into a dense view of `span` entries
  (and a scratch entry), the steps run on it as on a dense cache, and the new entries are written
  back to the pages after the round: a transient dense copy of the span, for speed on CPU.
  `round_upcast`: a cache narrower than float32 is attended through a float32 copy of the entries
  the steps attend over, and the rows' new entries are written back after the round: XLA's CPU
  backend converts a bfloat16 operand to float32 for every dot, so attending a bfloat16 cache
  costs a conversion of the span at every step; the tokens and log-probs are the same bits
  (`_xla_attention`). A float32 cache is attended as it is."""
  TRACE_COUNTS["decode"] += 1
  model = nnx.merge(graphdef, params, rest)
  s = active.shape[0]
  pool = None
  if page_size and round_gather:
    pool, start = state.cache, state.lengths
    table = state.pages[:, : span // page_size]
    view = _per_layer(pool, lambda layer: paged_kv.dense_view(layer, table))
    span += page_size  # The whole view (the scratch page's entries are never valid keys): no
    # slice of it a step; idle rows write to its last entry.
    state, page_size, cache_sharding = state.replace(cache=view), 0, None
  low = None
  narrow = jnp.dtype(jax.tree.leaves(state.cache)[0].dtype).itemsize < 4
  if round_upcast and narrow and not page_size:  # A dense cache, or a paged one's gathered view.
    if pool is None:  # Dense: the attended entries and one past them, the copy's scratch entry.
      low, start = state.cache, state.lengths
      kept = min(span + 1, cache_entries(low)) if span else cache_entries(low)
      state = state.replace(cache=jax.tree.map(lambda x: x[..., :kept, :], low))
    state = state.replace(cache=jax.tree.map(lambda x: x.astype(jnp.float32), state.cache))
  scratch = 0 if page_size else cache_entries(state.cache) - 1
  entries = jnp.arange(span or scratch + 1)
  banned = jnp.any(jnp.arange(state.logits.shape[-1])[:, None] == banned_ids[None, :], axis=-1)
  budget = jnp.minimum(budget, capacity - state.lengths)

  def cond(carry):
    step, _, _, done, _, _, yielded = carry
    return (step < max_steps) & ~jnp.all(done) & ~yielded

  def body(carry):
    step, state, n, done, tokens, logprobs, yielded = carry
    step_keys = jax.vmap(jax.random.fold_in)(keys, counts + n)
    tok, _ = choose_tokens(
      jnp.where(banned, -jnp.inf, state.logits), step_keys, temperature, top_k, top_p, greedy=greedy, filtered=filtered
    )
    live = ~done
    tokens = tokens.at[:, step].set(jnp.where(live, tok, 0))
    logprobs = logprobs.at[:, step].set(jnp.where(live, policy_logprobs(state.logits, tok), 0.0))
    index = jnp.where(live, state.lengths, scratch)
    key_ok = (entries[None, :] <= index[:, None]) | ~live[:, None]  # Idle rows: output dropped.
    if page_size:  # The flat pool entry of each row's new token (idle rows: the scratch page's).
      page = jnp.take_along_axis(state.pages, (state.lengths // page_size)[:, None], 1, mode="clip")[:, 0]
      flat = jnp.where(live, page * page_size + state.lengths % page_size, paged_kv.SCRATCH_PAGE * page_size)
      index = paged_kv.PagedIndex(flat[:, None], state.pages[:, : span // page_size])
    embeds, _ = model.embed(tok[:, None])
    positions = jnp.broadcast_to(state.counters[None, :, None], (3, s, 1))
    hidden, cache = model.extend(embeds, positions, key_ok[:, None, None, :], state.cache, index)
    cache = _constrain(cache, cache_sharding)
    new_logits = model.logits(hidden[:, -1]).astype(state.logits.dtype)
    state = state.replace(
      cache=cache,
      logits=jnp.where(live[:, None], new_logits, state.logits),
      lengths=state.lengths + live,
      counters=state.counters + live,
    )
    n = n + live
    stopped = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    done = done | (live & stopped) | (n >= budget)
    yielded = jnp.any(live & jnp.any(tok[:, None] == yield_ids[None, :], axis=-1))
    return step + 1, state, n, done, tokens, logprobs, yielded

  carry = (
    jnp.asarray(0, jnp.int32),
    state,
    jnp.zeros((s,), jnp.int32),
    ~active | (budget <= 0),
    jnp.zeros((s, max_steps), jnp.int32),
    jnp.zeros((s, max_steps), jnp.float32),
    jnp.asarray(False),
  )
  _, state, n, _, tokens, logprobs, _ = jax.lax.while_loop(cond, body, carry)
  if pool is not None:
    steps = max_steps
    pool = _per_layer(
      (pool, state.cache), lambda both: paged_kv.write_back(both[0], both[1], start, n, state.pages, steps)
    )
    state = state.replace(cache=pool)
  if low is not None:
    state = state.replace(cache=_constrain(_write_back(low, state.cache, start, n, max_steps), cache_sharding))
  return tokens, logprobs, n, state


def _write_back(cache, copy, start, count, steps: int):
  """`cache` with each row's entries start[r] .. start[r] + count[r] - 1 (count <= `steps`) taken
  from `copy` (a wider copy of its first entries, which a decode round ran on) in the cache's
  dtype; the rest of the `steps` writes go to the scratch entry (the cache's last)."""
  lead = (slice(None),) * cache_slot_axis(cache)
  e = start[:, None] + jnp.arange(steps)  # [S, steps]
  rows = jnp.arange(start.shape[0])[:, None]
  src = lead + (rows, slice(None), jnp.minimum(e, cache_entries(copy) - 1))
  dst = lead + (rows, slice(None), jnp.where(jnp.arange(steps) < count[:, None], e, cache_entries(cache) - 1))
  return jax.tree.map(lambda c, w: c.at[dst].set(w[src].astype(c.dtype)), cache, copy)


def _per_layer(tree, fn):
  """`fn` over each layer of a cache (a list of layer dicts, or a stacked dict: vmapped over its
  leading layer axis); `tree` may be a tuple of caches of one form."""
  first = tree[0] if isinstance(tree, tuple) else tree
  if isinstance(first, dict):
    return jax.vmap(fn)(tree)
  if isinstance(tree, tuple):
    return [fn(layers) for layers in zip(*tree)]
  return [fn(layer) for layer in tree]


class DecodeEngine:
  """One model's prefill and decode over a state of `num_slots` sequences, with swappable
  parameters; see the module docstring.

  The model is split into its graph definition (static for the jitted functions, so engines of
  one architecture share compilations) and its parameters (an `nnx.State` argument), so
  `update_params` replaces the weights without a recompilation. `chunk` is the prefill piece of
  `append` (0: this engine only prefills whole batches with `prefill`, and its cache needs no
  room for chunk padding). `page_size` > 0: the cache is paged (`models.paged_kv`): one pool of
  pages shared by the slots, each slot holding pages for its tokens only (`allocate`'s
  `pool_tokens`); 0: a dense cache of `capacity` entries per slot. `round_gather` (default: on
  CPU) is `_decode`'s; so is `round_upcast` (default: on CPU; it applies to a cache narrower than
  float32). `append_entries` bounds a batched append's rows x attended entries (default:
  `CPU_APPEND_ENTRIES` on CPU, no bound elsewhere; 0: none).
  """

  def __init__(
    self,
    model: nnx.Module,
    *,
    chunk: int = 128,
    params: nnx.State | None = None,
    rules=None,
    page_size: int = 0,
    round_gather: bool | None = None,
    round_upcast: bool | None = None,
    append_entries: int | None = None,
  ):
    self._graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)
    self.config = model.config
    # The cache's form follows the decoder's (stacked for scanned layers).
    self._stacked = model.scan_layers
    self.chunk = chunk
    self.page_size = page_size
    # Paged decode rounds gather their pages once (CPU: fast, a transient dense copy of the span)
    # or at every step (accelerators: memory follows the pages; a kernel belongs there).
    self.round_gather = jax.default_backend() == "cpu" if round_gather is None else round_gather
    # A decode round on CPU runs on a float32 copy of a narrower cache's attended entries: XLA's
    # CPU dots convert a bfloat16 operand at every step (1.5x the round; benchmarks/bf16_decode.py).
    self.round_upcast = jax.default_backend() == "cpu" if round_upcast is None else round_upcast
    # A batched append's rows x attended entries, at most (0: no bound). XLA's CPU attention
    # materialises the [rows, K, G * chunk, span] scores: past a few MB it runs at memory speed
    # (8 rows at 4k entries: 2.1-2.3x a row; benchmarks/kv_cache.py). Accelerators batch.
    self.append_entries = (
      (CPU_APPEND_ENTRIES if jax.default_backend() == "cpu" else 0) if append_entries is None else append_entries
    )
    self.pool: PagePool | None = None  # a paged cache's page accounting
    self._pages_version = -1  # the `pool.version` the device's page table has
    self.rules = parallel.DEFAULT_RULES if rules is None else rules
    if params is not None:  # The engine's own parameters (e.g. a bfloat16 copy): their dtypes
      self._check_structure(params)  # are what later `update_params` calls must match.
      self._params = params
    self.state: DecodeState | None = None
    self._cache_sharding = None
    self.last_span = 0
    self.capacity = 0
    self._lengths = np.zeros((0,), np.int64)  # Host copy; `_unsynced` holds the last decode's counts.
    self._unsynced = None

  @property
  def params(self) -> nnx.State:
    return self._params

  def update_params(self, params: nnx.State) -> None:
    """Uses `params` (e.g. the trainer's, on device) from the next call on. No copy is made.

    `params` must have the structure, shapes and dtypes of the model's `nnx.Param` state (as
    `nnx.state(model, nnx.Param)` gives); anything else would recompile, so it raises instead.
    """
    old, new = self._check_structure(params)
    for (path, a), (_, b) in zip(old, new):
      if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(
          f"update_params: {jax.tree_util.keystr(path)} is {b.dtype}{list(b.shape)}, "
          f"the sampler was built for {a.dtype}{list(a.shape)}"
        )
    self._params = params

  def _check_structure(self, params: nnx.State) -> tuple[list, list]:
    old = jax.tree_util.tree_flatten_with_path(self._params)[0]
    new, new_def = jax.tree_util.tree_flatten_with_path(params)
    if new_def != jax.tree.structure(self._params):
      missing = {jax.tree_util.keystr(p) for p, _ in old} ^ {jax.tree_util.keystr(p) for p, _ in new}
      raise ValueError(
        "update_params: the new state's structure differs from the model's "
        f"parameters (paths in one but not the other: {sorted(missing)[:5]}); pass "
        "nnx.state(model, nnx.Param) of the same architecture"
      )
    return old, new

  @property
  def dtype(self):
    """The dtype of the cache: the parameters' (their most common floating dtype)."""
    floats = [x.dtype for x in jax.tree.leaves(self._params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return max(set(floats), key=floats.count)

  @property
  def mesh(self):
    """The mesh the parameters live on, or None (single device, or not a named sharding)."""
    sharding = getattr(jax.tree.leaves(self._params)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None

  def cache_sharding(self, num_slots: int, length: int):
    """The NamedSharding of every cache array (one for all layers), or None off a mesh. A paged
    cache's arrays are [num_pages, K, page_size, D]: `num_slots` is then the number of pages and
    `length` the page size."""
    mesh = self.mesh
    if mesh is None or mesh.size == 1:
      return None
    tc = self.config.text
    shape = (num_slots, tc.num_key_value_heads, length, tc.resolved_head_dim)
    if self.page_size:
      shape = (num_slots, tc.num_key_value_heads, length, tc.resolved_head_dim)
    if self._stacked:
      shape = (tc.num_hidden_layers,) + shape
    axes = cache_logical_axes(self._stacked, paged=bool(self.page_size))
    spec = parallel.logical_to_spec(axes, self.rules, shape, mesh)
    return jax.sharding.NamedSharding(mesh, spec)

  # ---- the state --------------------------------------------------------------------------

  def allocate(self, num_slots: int, capacity: int, pool_tokens: int | None = None) -> None:
    """A fresh state of `num_slots` empty slots holding up to `capacity` tokens each. A paged
    engine's pool holds `pool_tokens` tokens in all (default: `num_slots * capacity`), rounded
    up to whole pages (on a mesh: a multiple of its devices), plus the scratch page."""
    tc = self.config.text
    if self.page_size:
      p = self.page_size
      pool_tokens = num_slots * capacity if pool_tokens is None else pool_tokens
      num_pages = -(-pool_tokens // p) + 1
      if self.mesh is not None:  # Whole pages on every device of the page axis.
        num_pages = -(-num_pages // self.mesh.size) * self.mesh.size
      self.pool = PagePool(num_pages, p, num_slots, max_pages=-(-capacity // p))
      self._pages_version = -1
      self._cache_sharding = self.cache_sharding(num_pages, p)
      make = functools.partial(
        paged_kv.init_pool,
        tc.num_hidden_layers,
        num_pages,
        p,
        tc.num_key_value_heads,
        tc.resolved_head_dim,
        self.dtype,
        stacked=self._stacked,
      )
    else:
      length = capacity + self.chunk + 1
      self._cache_sharding = self.cache_sharding(num_slots, length)
      make = functools.partial(init_kv_cache, tc, num_slots, length, self.dtype, stacked=self._stacked)
    if self._cache_sharding is None:
      cache = make()
    else:  # Born sharded: the whole cache never exists on one device.
      cache = jax.jit(make, out_shardings=self._cache_sharding)()
    self.state = DecodeState(
      cache=cache,
      logits=jnp.zeros((num_slots, tc.vocab_size), jnp.float32),
      lengths=jnp.zeros((num_slots,), jnp.int32),
      counters=jnp.zeros((num_slots,), jnp.int32),
    )
    self.capacity = capacity
    self._sync_pages()
    self._lengths = np.zeros((num_slots,), np.int64)
    self._unsynced = None

  def release(self) -> None:
    """Drops the state (and the memory of its cache)."""
    self.state, self._unsynced, self.pool = None, None, None

  def _attended(self, needed: int) -> int:
    """The cache entries a call that needs the first `needed` attends over (`attention_span`;
    `paged_span` for a paged cache)."""
    if self.page_size:
      return paged_span(needed, self.page_size, self.pool.max_pages)
    return attention_span(needed, cache_entries(self.state.cache))

  def _span(self, needed: int) -> int:
    """`_attended(needed)` for a call about to run, recorded in `last_span`."""
    self.last_span = self._attended(needed)
    return self.last_span

  def _sync_pages(self) -> None:
    """Sends the page table to the device when it changed since the last call."""
    if self.pool is not None and self._pages_version != self.pool.version:
      self.state = self.state.replace(pages=jnp.asarray(self.pool.table))
      self._pages_version = self.pool.version

  def _reserve(self, slot: int, tokens: int) -> None:
    """Pages for a paged slot's first `tokens` entries, or PoolFull."""
    if self.pool is not None and not self.pool.reserve(slot, tokens):
      raise PoolFull(
        f"slot {slot}: no free pages for {tokens} tokens ({self.pool.free_tokens} "
        f"free of the pool's {(self.pool.num_pages - 1) * self.page_size}); free or "
        "preempt a slot, or raise the pool size (rollout.kv_pool_tokens)"
      )

  @property
  def num_slots(self) -> int:
    return len(self._lengths)

  @property
  def lengths(self) -> np.ndarray:
    """Tokens in each slot (a host copy; reading it after `decode` waits for the decode)."""
    if self._unsynced is not None:
      self._lengths = self._lengths + np.asarray(self._unsynced)
      self._unsynced = None
    return self._lengths

  @property
  def logits(self) -> jax.Array:
    """The pending next-token logits [S, V] of every slot."""
    return self.state.logits

  def reset(self, slot: int) -> None:
    """Empties a slot (its stale cache entries are never valid keys again; a paged slot's pages
    go back to the pool)."""
    if self.pool is not None:
      self.pool.release(slot)
    self.lengths[slot] = 0
    self.state = self.state.replace(
      lengths=self.state.lengths.at[slot].set(0), counters=self.state.counters.at[slot].set(0)
    )

  # ---- prefill ----------------------------------------------------------------------------

  def _check(self, input_ids, pixel_values, image_grid_thw) -> None:
    if self.state is None:
      raise ValueError("the engine has no state: call allocate(num_slots, capacity) first")
    prepare.check_image_tokens(self.config, input_ids, pixel_values, image_grid_thw)

  def _filler_id(self) -> int:
    """Padding after the real tokens of a row: any id that is not an image token."""
    return 0 if self.config.image_token_id != 0 else 1

  def append(self, slot: int, input_ids, pixel_values=None, image_grid_thw=None) -> None:
    """Prefills a segment (text with expanded image pads, and its images) after the slot's
    content, `chunk` tokens at a time."""
    self.append_many([(slot, input_ids, pixel_values, image_grid_thw)])

  def append_many(self, items: Sequence[tuple]) -> None:
    """`append` for several slots at once: `items` are (slot, input_ids, pixel_values,
    image_grid_thw), one per slot. Their images go through the vision tower in one call and their
    segments are prefilled together, `chunk` tokens of every row a call, in groups of 2^k rows
    (few compilations); each slot ends as `append` leaves it."""
    if not self.chunk:
      raise ValueError(
        "this engine was built with chunk=0 (whole-batch prefill only); build it "
        "with a chunk size to append to single slots"
      )
    rows = []
    for slot, input_ids, pixel_values, image_grid_thw in items:
      ids = np.asarray(input_ids, np.int32).reshape(-1)
      if len(ids) == 0:
        continue
      grid = None if image_grid_thw is None or len(image_grid_thw) == 0 else np.asarray(image_grid_thw)
      pixel_values = pixel_values if grid is not None else None
      self._check(ids[None], pixel_values, grid)
      start = int(self.lengths[slot])
      if start + len(ids) > self.capacity:
        raise ValueError(f"slot {slot}: {start} + {len(ids)} tokens exceed the capacity {self.capacity}")
      rows.append((int(slot), ids, pixel_values, None if grid is None else grid.reshape(-1, 3)))
    if len({r[0] for r in rows}) != len(rows):
      raise ValueError(f"append_many takes one segment per slot, got slots {[r[0] for r in rows]}")

    def end(row) -> int:  # The row's slot length once appended (rows not yet appended).
      return int(self.lengths[row[0]]) + len(row[1])

    for row in rows:
      self._reserve(row[0], end(row))
    self._sync_pages()
    # Shortest first, so that a group's rows attend over similar spans (its longest row's, the
    # last), in groups of 2^k rows of at most `append_entries` rows x span.
    rows.sort(key=end)
    while rows:
      r = 1 << (len(rows).bit_length() - 1)
      while r > 1 and self.append_entries and r * self._attended(end(rows[r - 1]) + self.chunk) > self.append_entries:
        r //= 2
      self._append_rows(rows[:r])
      rows = rows[r:]

  def _append_rows(self, rows: list) -> None:
    """One batched prefill of `rows` (slot, ids, pixel values, grid), checked and with pages."""
    c = self.chunk
    slots = np.asarray([r[0] for r in rows], np.int32)
    lengths = np.asarray([len(r[1]) for r in rows], np.int32)
    starts = np.asarray([self.lengths[s] for s in slots], np.int64)
    n_max = int(lengths.max())
    width = max(prompt_bucket(n_max), -(-n_max // c) * c)
    padded = np.full((len(rows), width), self._filler_id(), np.int32)
    positions = np.zeros((3, len(rows), width), np.int32)
    for i, (_, ids, _, grid) in enumerate(rows):
      padded[i, : len(ids)] = ids
      positions[:, i, : len(ids)] = prepare.position_ids(self.config, ids[None], grid)[:, 0]
    advance = np.asarray([positions[:, i, :n].max() + 1 for i, n in enumerate(lengths)], np.int32)
    grids = [r[3] for r in rows if r[3] is not None]
    vision = None
    if grids:  # Every row's images in row order: the k-th image token of the batch takes row k.
      vision = _run_vision(
        self, np.concatenate([np.asarray(r[2]) for r in rows if r[3] is not None]), np.concatenate(grids)
      )
    embeds, deepstack = _embed(self._graphdef, self._params, self._rest, padded, vision)
    for lo in range(0, n_max, c):
      piece = slice(lo, lo + c)
      ds = None if deepstack is None else (deepstack[0][:, piece], [f[:, piece] for f in deepstack[1]])
      n_real = np.clip(lengths - lo, 0, c).astype(np.int32)
      is_last = (lengths > lo) & (lengths <= lo + c)
      write = None
      if self.pool is not None:
        write = np.stack(
          [self.pool.write_entries(s, int(st) + lo, int(k), c) for s, st, k in zip(slots, starts, n_real)]
        )
      self.state = _prefill(
        self._graphdef,
        self._params,
        self._rest,
        self.state,
        slots,
        embeds[:, piece],
        ds,
        positions[:, :, piece],
        n_real,
        np.where(is_last, lengths - 1 - lo, -1).astype(np.int32),
        np.where(is_last, advance, 0).astype(np.int32),
        write,
        all_slots=False,
        cache_sharding=self._cache_sharding,
        span=self._span(int((starts + np.minimum(lengths, lo)).max()) + c),
        page_size=self.page_size,
      )
    for s, st, n in zip(slots, starts, lengths):
      self._lengths[s] = st + n

  def prefill(self, rows: Sequence[np.ndarray], pixel_values=None, image_grid_thw=None) -> None:
    """Fills every slot, all empty, with one segment each (`rows[s]`, token ids) in one batched
    call; the images of all rows come in row order, as a processor gives them."""
    s = self.num_slots
    if len(rows) != s:
      raise ValueError(f"prefill takes one segment per slot: {len(rows)} for {s} slots")
    if self.lengths.any():
      raise ValueError("prefill fills empty slots only; reset them or allocate a new state")
    lengths = np.asarray([len(r) for r in rows], np.int32)
    if lengths.min() < 1 or lengths.max() > self.capacity:
      raise ValueError(f"every segment needs 1 to {self.capacity} tokens, got {lengths.tolist()}")
    padded = np.full((s, prompt_bucket(int(lengths.max()))), self._filler_id(), np.int32)
    real = np.arange(padded.shape[1])[None] < lengths[:, None]
    padded[real] = np.concatenate([np.asarray(r, np.int32) for r in rows])
    self._check(padded, pixel_values, image_grid_thw)
    write = None
    if self.pool is not None:
      for slot, n in enumerate(lengths):
        self._reserve(slot, int(n))
      self._sync_pages()
      write = np.stack([self.pool.write_entries(slot, 0, int(n), padded.shape[1]) for slot, n in enumerate(lengths)])
    positions = prepare.position_ids(self.config, padded, image_grid_thw, real)
    embeds, deepstack = _embed(
      self._graphdef, self._params, self._rest, padded, _run_vision(self, pixel_values, image_grid_thw)
    )
    self.state = _prefill(
      self._graphdef,
      self._params,
      self._rest,
      self.state,
      np.arange(s, dtype=np.int32),
      embeds,
      deepstack,
      positions,
      lengths,
      lengths - 1,
      (positions.max(axis=(0, 2)) + 1).astype(np.int32),
      write,
      all_slots=True,
      cache_sharding=self._cache_sharding,
      span=self._span(padded.shape[1]),
      page_size=self.page_size,
    )
    self._lengths = lengths.astype(np.int64)

  # ---- decode -----------------------------------------------------------------------------

  def decode(
    self,
    active,
    budget,
    keys,
    counts,
    *,
    max_steps: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    banned_ids: Sequence[int] = (),
    yield_ids: Sequence[int] = (),
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples for the slots where `active` [S] is set; see `_decode` (`yield_ids`: stop ids
    that end the call for every slot, e.g. `</tool_call>`, so that its tool runs at once).
    Returns device arrays: tokens and log-probs [S, max_steps] and the count sampled per slot.

    A paged slot first takes the pages its round can fill (up to `max_steps` or its budget) where
    the pool has them; it samples at most what its pages hold (`ModelPolicy` preempts a slot to
    free pages instead)."""
    if self.state is None:
      raise ValueError("the engine has no state: call allocate(num_slots, capacity) first")
    active = np.asarray(active, bool)
    budget = np.asarray(budget, np.int32)
    lengths = self.lengths
    filled = int(lengths[active].max()) if active.any() else 0
    if self.pool is not None:
      budget = budget.copy()
      for slot in np.flatnonzero(active):
        want = min(int(lengths[slot]) + min(max_steps, max(int(budget[slot]), 0)), self.capacity)
        if not self.pool.reserve(slot, want):  # What the pool has left.
          self.pool.reserve(slot, min(want, self.pool.room(slot) + self.pool.free_tokens))
        budget[slot] = min(budget[slot], self.pool.room(slot) - lengths[slot])
      self._sync_pages()
    tokens, logprobs, n, self.state = _decode(
      self._graphdef,
      self._params,
      self._rest,
      self.state,
      active,
      budget,
      np.int32(self.capacity),
      keys,
      np.asarray(counts, np.int32),
      np.float32(temperature),
      np.int32(top_k),
      np.float32(top_p),
      id_array(stop_ids),
      id_array(banned_ids),
      id_array(yield_ids),
      max_steps=max_steps,
      greedy=temperature == 0,
      filtered=temperature > 0 and (top_k > 0 or top_p < 1),
      cache_sharding=self._cache_sharding,
      span=self._span(filled + max_steps),
      page_size=self.page_size,
      round_gather=self.round_gather,
      round_upcast=self.round_upcast,
    )
    self._unsynced = n if self._unsynced is None else self._unsynced + n  # Stays on device.
    return tokens, logprobs, n
