"""The policy interface of the agent loop, with the model behind it or a script.

A policy holds `num_slots` sequences. The agent loop calls

* `start(slot, trajectory_id, input_ids, pixel_values, image_grid_thw)`: a new trajectory's prompt
  goes into a free slot;
* `append(slot, input_ids, pixel_values, image_grid_thw)`: tokens the policy did not sample (a
  tool turn, with its image) are added to that slot (chunked prefill);
* `decode(slots, budgets)`: one batched call that samples for those slots; for each it returns
  (tokens, log-probs), ending at a stop token, at the slot's budget or at the policy's step count;
* `finish(slot)`: the slot's trajectory ended (its memory may be reused);
* `can_admit(pending)`: whether a new trajectory should start now (a paged cache with room for
  it besides `pending` tokens about to be prefilled).
`ModelPolicy` also has `start_many` and `append_many`: several slots' segments in one batched
prefill (the agent loop uses them when present).

A `ModelPolicy` with a paged cache (`page_size` > 0) holds pages for the tokens in use only, in a
pool of `pool_tokens`. Each call shares the pool out first to the slots it serves (the slots
decoding, or those given a segment), then to the other slots in use (waiting on a tool), the
oldest started first within each group. A slot that does not fit after the ones before it is
preempted: its pages go back to the pool and it is paused (its `decode` returns nothing) until
a call serving it finds room, when its whole conversation is prefilled again into fresh pages
(same tokens, same positions; its sampling stream is keyed by its token count, so it samples
what it would have). A paused slot's tool turns are kept and come in with that prefill. The
oldest slot a call serves always fits, so every call makes progress.

`ModelPolicy` runs the model (`engine.DecodeEngine`); `ScriptedPolicy` replays given assistant texts
through the tokenizer, so the loop can be tested against the real executor without a model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol, Sequence

import jax
import numpy as np
from flax import nnx

from codevision_jax.sampling.engine import DecodeEngine
from codevision_jax.sampling.paged import CacheFit, token_bytes

log = logging.getLogger(__name__)


class Policy(Protocol):
  num_slots: int

  def start(self, slot: int, trajectory_id: int, input_ids, pixel_values=None, image_grid_thw=None) -> None: ...

  def append(self, slot: int, input_ids, pixel_values=None, image_grid_thw=None) -> None: ...

  def decode(self, slots: Sequence[int], budgets: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]: ...

  def finish(self, slot: int) -> None: ...

  def can_admit(self, pending: int = 0) -> bool: ...


@dataclasses.dataclass
class _Held:
  """What a paged slot holds, to prefill it again after a preemption: its segments in order
  (token ids, pixel values or None, grids or None) and when it started (the preemption order)."""

  started: int
  segments: list = dataclasses.field(default_factory=list)

  def add_tokens(self, tokens) -> None:
    if len(tokens):
      self.segments.append((np.asarray(tokens, np.int32), None, None))

  @property
  def tokens(self) -> int:
    return sum(len(ids) for ids, _, _ in self.segments)

  def whole(self) -> tuple:
    """The conversation as one segment."""
    ids = np.concatenate([ids for ids, _, _ in self.segments])
    pvs = [pv for _, pv, grid in self.segments if grid is not None]
    grids = [np.asarray(grid).reshape(-1, 3) for _, _, grid in self.segments if grid is not None]
    if not grids:
      return ids, None, None
    return ids, np.concatenate([np.asarray(pv) for pv in pvs]), np.concatenate(grids)


class ModelPolicy:
  """The model, sampling at `temperature` (0: greedy) with optional top-k/top-p; image pads and
  vision markers are never sampled (only tool turns place them).

  Trajectory t samples with the key `fold_in(PRNGKey(seed), t)` folded with its token count, so
  its random stream does not depend on which slot it ran in or what ran beside it (a run is
  reproducible given the seed, the records and the number of slots).

  `page_size` > 0: a paged KV cache of `pool_tokens` tokens shared by the slots (default and
  at most `num_slots * capacity`), `capacity` tokens at most per slot; a new trajectory is
  admitted (`can_admit`) while no slot is paused and the pool has `admit_tokens` free (default
  capacity / 8). See the module docstring for preemption. `fit` says what the cache holds (how
  many trajectories of `average_tokens`, default capacity / 4, and of `capacity` tokens fit);
  it is logged at start.
  """

  def __init__(
    self,
    model: nnx.Module,
    stop_ids: Sequence[int],
    *,
    num_slots: int = 8,
    capacity: int = 4096,
    chunk: int = 128,
    steps_per_call: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    params: nnx.State | None = None,
    rules=None,
    yield_ids: Sequence[int] = (),
    page_size: int = 0,
    pool_tokens: int | None = None,
    admit_tokens: int | None = None,
    average_tokens: int | None = None,
  ):
    self.num_slots, self.capacity = num_slots, capacity
    if page_size:
      pool_tokens = num_slots * capacity if not pool_tokens else min(pool_tokens, num_slots * capacity)
    self.pool_tokens = pool_tokens
    if page_size and pool_tokens < capacity:
      raise ValueError(
        f"the KV pool of {pool_tokens} tokens (rollout.kv_pool_tokens) cannot hold "
        f"one trajectory of {capacity} tokens; raise it to at least {capacity}"
      )
    self.admit_tokens = capacity // 8 if admit_tokens is None else admit_tokens
    self.engine = DecodeEngine(model, chunk=chunk, params=params, rules=rules, page_size=page_size)
    self.engine.allocate(num_slots, capacity, pool_tokens)
    self.fit = CacheFit(
      bool(page_size),
      pool_tokens if page_size else num_slots * capacity,
      token_bytes(model.config.text, self.engine.dtype),
      num_slots,
      capacity,
      capacity // 4 if average_tokens is None else average_tokens,
    )
    log.info(self.fit.line())
    self._held: dict[int, _Held] = {}  # paged: every slot in use
    self.paused: list[int] = []  # paged: preempted slots, oldest first
    self._started = 0
    self.preemptions = 0
    self.stop_ids = list(stop_ids)
    self.yield_ids = list(yield_ids)  # Stops that end a decode round at once (a tool to call).
    self.steps_per_call = steps_per_call
    self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    self._temperature = temperature  # The policy's own; `reseed` may override it for a while.
    c = model.config
    self.banned_ids = [
      i for i in (c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id) if i is not None
    ]
    self.seed = seed
    self._keys = np.array(jax.random.split(jax.random.PRNGKey(seed), num_slots))
    self._counts = np.zeros((num_slots,), np.int32)

  def reseed(self, seed: int, *, temperature: float | None = None) -> None:
    """Trajectories started from now on sample with the streams of `seed` (a round's seed, an
    evaluation's), at `temperature` when given, else at the policy's own."""
    self.seed = seed
    self.sampling["temperature"] = self._temperature if temperature is None else temperature

  def update_params(self, params: nnx.State) -> None:
    self.engine.update_params(params)

  def release(self) -> None:
    """Frees the KV cache (e.g. while a learner runs); the next `start` allocates it again."""
    self.engine.release()
    self._held, self.paused = {}, []

  def delete_params(self, keep=()) -> None:
    """Frees the KV cache and deletes the policy's parameter arrays (its own copy, stale once a
    learner updates) except those in the tree `keep` (arrays it shares with the caller), so that
    neither is held meanwhile; `update_params` gives it new ones."""
    self.release()
    kept = {id(x) for x in jax.tree.leaves(keep)}
    for x in jax.tree.leaves(self.engine.params):
      if id(x) not in kept and isinstance(x, jax.Array) and not x.is_deleted():
        x.delete()

  @property
  def paged(self) -> bool:
    return self.engine.page_size > 0

  def start(self, slot, trajectory_id, input_ids, pixel_values=None, image_grid_thw=None):
    self.start_many([(slot, trajectory_id, input_ids, pixel_values, image_grid_thw)])

  def append(self, slot, input_ids, pixel_values=None, image_grid_thw=None):
    self.append_many([(slot, input_ids, pixel_values, image_grid_thw)])

  def start_many(self, items) -> None:
    """`start` for several slots: items are (slot, trajectory_id, input_ids, pixel_values,
    image_grid_thw); their prompts are prefilled together (`append_many`)."""
    for slot, trajectory_id, *_ in items:
      if self.engine.state is None:
        self.engine.allocate(self.num_slots, self.capacity, self.pool_tokens)
      self.engine.reset(slot)
      self._keys[slot] = np.asarray(jax.random.fold_in(jax.random.PRNGKey(self.seed), trajectory_id))
      self._counts[slot] = 0
      if self.paged:
        self._started += 1
        self._held[slot] = _Held(self._started)
    self.append_many([(slot, *segment) for slot, _, *segment in items])

  def append_many(self, items) -> None:
    """`append` for several slots (items: (slot, input_ids, pixel_values, image_grid_thw)) in
    one batched prefill (`DecodeEngine.append_many`): the vision tower over all their images at
    once, their segments prefilled together. Paged: a slot without room is paused with its
    segment kept; a paused one with room is resumed, this segment included."""
    if not self.paged:
      self.engine.append_many(items)
      return
    grow = {}
    for slot, input_ids, pixel_values, image_grid_thw in items:
      ids = np.asarray(input_ids, np.int32).reshape(-1)
      self._held[slot].segments.append((ids, pixel_values, image_grid_thw))
      grow[slot] = 0 if slot in self.paused else len(ids)  # A paused slot's whole() has it.
    live, resumed = self._fit(grow)
    self.engine.append_many([item for item in items if item[0] in live and item[0] not in resumed])

  def finish(self, slot: int) -> None:
    """The slot's trajectory ended: a paged slot's pages go back to the pool."""
    if self.paged and self.engine.state is not None:
      self.engine.reset(slot)
      self._held.pop(slot, None)
      if slot in self.paused:
        self.paused.remove(slot)

  def can_admit(self, pending: int = 0) -> bool:
    """Whether a new trajectory should start now: always with a dense cache; with a paged one,
    while no slot is paused and `admit_tokens` are free besides `pending` tokens about to be
    prefilled (or no slot is in use)."""
    if not self.paged or self.engine.pool is None or not self._held:
      return True
    return not self.paused and self.engine.pool.free_tokens - pending >= self.admit_tokens

  # ---- paged: preemption ---------------------------------------------------------------------

  def _fit(self, grow: dict[int, int]) -> tuple[set[int], set[int]]:
    """Shares the pool out for a call in which the slots of `grow` ({slot: tokens}) take that
    many tokens more (a decode round, an appended segment): first to those slots, then to the
    other slots in use (each keeping the pages it holds), the oldest started first in each
    group. A slot that does not fit after the ones before it is preempted (or stays paused);
    a paused slot of `grow` that fits is resumed, its conversation prefilled again. Returns the
    slots of `grow` with room now, and those of them resumed.

    The first slot of `grow` always fits (the pool holds `capacity` tokens at least), so each
    call lets a slot progress and preemption cannot go round in circles."""
    pool, lengths = self.engine.pool, self.engine.lengths

    def age(s):
      return self._held[s].started

    others = [s for s in self._held if s not in grow and s not in self.paused]
    free, live, resumed = pool.num_pages - 1, set(), []
    for s in sorted(grow, key=age) + sorted(others, key=age):
      paused = s in self.paused
      tokens = (self._held[s].tokens if paused else int(lengths[s])) + grow.get(s, 0)
      need = pool.pages_for(min(tokens, self.capacity))
      if not paused:
        need = max(need, int(pool.held[s]))
      if need <= free:
        free -= need
        if s in grow:
          live.add(s)
          if paused:
            resumed.append(s)
      elif not paused:
        self._preempt(s)
    for s in resumed:  # After the preemptions: their pages are free now.
      self.paused.remove(s)
      self.engine.append(s, *self._held[s].whole())
    return live, set(resumed)

  def _preempt(self, slot: int) -> None:
    """Frees a slot's pages and pauses it (its segments are kept)."""
    self.preemptions += int(self.engine.pool.held[slot] > 0)
    self.engine.reset(slot)
    self.paused.append(slot)

  def decode(self, slots, budgets):
    """Samples for `slots`; a paused slot (paged cache) gets no tokens this round."""
    asked = list(slots)
    if self.paged:
      live, _ = self._fit({s: min(self.steps_per_call, max(int(b), 0)) for s, b in zip(slots, budgets)})
      kept = [(s, b) for s, b in zip(slots, budgets) if s in live]
      slots, budgets = [s for s, _ in kept], [b for _, b in kept]
    empty = (np.zeros((0,), np.int32), np.zeros((0,), np.float32))
    if not slots:
      return {s: empty for s in asked}
    active = np.zeros((self.num_slots,), bool)
    budget = np.zeros((self.num_slots,), np.int32)
    active[list(slots)] = True
    budget[list(slots)] = budgets
    tokens, logprobs, n = jax.device_get(
      self.engine.decode(
        active,
        budget,
        self._keys,
        self._counts,
        max_steps=self.steps_per_call,
        stop_ids=self.stop_ids,
        banned_ids=self.banned_ids,
        yield_ids=self.yield_ids,
        **self.sampling,
      )
    )
    self._counts += n.astype(np.int32)
    out = {s: (tokens[s, : n[s]], logprobs[s, : n[s]]) for s in slots}
    for s in out if self.paged else ():
      self._held[s].add_tokens(out[s][0])
    return {s: out.get(s, empty) for s in asked}


class ScriptedPolicy:
  """Emits scripted assistant turns: `scripts[trajectory_id]` is a list of texts, one per turn,
  each ending in a stop token (`</tool_call>`, `<|im_end|>`); past the script it emits
  `<|im_end|>`. Log-probs are -1. `appended[trajectory_id]` records every segment the loop
  added (prompt first), as token ids."""

  def __init__(self, tokenizer, scripts: dict, *, num_slots: int = 4, steps_per_call: int = 16):
    self.tokenizer = tokenizer
    self.scripts = {k: list(v) for k, v in scripts.items()}
    self.num_slots = num_slots
    self.steps_per_call = steps_per_call
    self.appended: dict[int, list[np.ndarray]] = {}
    self._slot_traj: dict[int, int] = {}
    self._turn: dict[int, int] = {}
    self._pending: dict[int, list[int]] = {}
    self.decode_calls = 0

  def _ids(self, text):
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def start(self, slot, trajectory_id, input_ids, pixel_values=None, image_grid_thw=None):
    self._slot_traj[slot] = trajectory_id
    self._turn[trajectory_id] = 0
    self._pending[slot] = []
    self.appended[trajectory_id] = [np.asarray(input_ids)]

  def append(self, slot, input_ids, pixel_values=None, image_grid_thw=None):
    self.appended[self._slot_traj[slot]].append(np.asarray(input_ids))

  def finish(self, slot):
    pass

  def can_admit(self, pending=0):
    return True

  def decode(self, slots, budgets):
    self.decode_calls += 1
    out = {}
    for slot, budget in zip(slots, budgets):
      traj = self._slot_traj[slot]
      if not self._pending[slot]:
        script = self.scripts.get(traj, [])
        turn = self._turn[traj]
        self._turn[traj] += 1
        self._pending[slot] = self._ids(script[turn] if turn < len(script) else "<|im_end|>")
      n = min(self.steps_per_call, int(budget), len(self._pending[slot]))
      tokens, self._pending[slot] = self._pending[slot][:n], self._pending[slot][n:]
      out[slot] = (np.asarray(tokens, np.int32), np.full((n,), -1.0, np.float32))
    return out
