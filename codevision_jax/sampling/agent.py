"""The multi-turn agent loop: trajectories that think with images through code.

    policy = ModelPolicy(model, environment.stop_ids(tokenizer), num_slots=32)
    async with ExecutorClient(url) as client:
      trajectories, stats = await run_agent(policy, records, tokenizer, client, settings, config)

This module is the scheduler; what the model is told and how its tool calls run is the CodeVision
tool environment (`sampling.environment`). Each record's prompt goes into a free slot of the
policy. Slots are decoded together, in one batched device call per round. When a slot's turn
ends, the environment reads it: a tool call that is well formed runs on the executor service as
an asyncio task while the other slots keep decoding; a malformed one gets its error response at
once. When a call returns, its tool turn (with the result image) is appended to the slot by
chunked prefill and decoding resumes. A finished slot takes the next record, when the policy
admits one (`can_admit`: a paged KV cache with free pages).

A trajectory ends with a `trajectory.Finish` reason: `answer`, `eos`, `max_turns` (from the
environment), `max_tokens` (the total token budget), or `error` (the executor could not be
reached, or the record's prompt cannot be built or does not fit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Callable, Sequence

from codevision_jax.processing import image as image_lib
from codevision_jax.sampling.environment import AgentConfig, CodeToolEnvironment, Segment
from codevision_jax.sampling.policy import Policy
from codevision_jax.sampling.trajectory import CallStatus, Finish, ToolCallRecord, Trajectory


@dataclasses.dataclass
class AgentStats:
  """Wall time of a run and how the decoder spent it (seconds)."""
  wall_s: float = 0.0
  decode_s: float = 0.0
  prefill_s: float = 0.0
  idle_s: float = 0.0  # nothing to decode while tool calls were in flight
  decode_calls: int = 0
  tool_calls: int = 0

  @property
  def idle_fraction(self) -> float:
    return self.idle_s / self.wall_s if self.wall_s else 0.0


class _Slot:
  """Host state of one trajectory in flight."""

  def __init__(self, traj: Trajectory):
    self.traj = traj
    self.turn_tokens: list[int] = []
    self.call: ToolCallRecord | None = None
    self.task: asyncio.Task | None = None  # the call on the executor; its result is the PNG
    self.t0 = time.perf_counter()


class AgentLoop:
  """Runs records through a policy and an environment; see the module docstring."""

  def __init__(self, policy: Policy, env: CodeToolEnvironment, *,
               on_finish: Callable[[Trajectory], None] | None = None):
    self.policy, self.env, self.on_finish = policy, env, on_finish
    self.max_total_tokens = env.config.max_total_tokens
    self.stats = AgentStats()
    capacity = getattr(policy, "capacity", None)
    if capacity is not None and capacity < self.max_total_tokens:
      raise ValueError(f"the policy holds {capacity} tokens per slot, fewer than max_total_tokens "
                       f"{self.max_total_tokens}; build it with capacity >= max_total_tokens")

  def _prefill(self, fn, slot: int, *args, segment: Segment) -> None:
    t = time.perf_counter()
    fn(slot, *args, segment.input_ids, segment.pixel_values, segment.image_grid_thw)
    self.stats.prefill_s += time.perf_counter() - t

  def _start(self, slot: int, index: int, record) -> _Slot:
    traj, prompt = self.env.start(index, record)
    if prompt is not None:
      self._prefill(self.policy.start, slot, index, segment=prompt)
    return _Slot(traj)

  def _after_decode(self, state: _Slot) -> ToolCallRecord | Finish | None:
    """After a decode chunk: None to keep decoding, the turn's tool call, or a finish reason."""
    if state.turn_tokens and state.turn_tokens[-1] in self.env.stop_ids:
      outcome = self.env.end_turn(state.traj, state.turn_tokens)
      state.turn_tokens = []
      return outcome
    if len(state.traj.token_ids) >= self.max_total_tokens:
      return Finish.MAX_TOKENS
    return None

  def _tool_turn(self, slot: int, state: _Slot, png: bytes | None) -> Finish | None:
    """Appends the answer to `state.call`; returns a finish reason if the trajectory ends."""
    call, state.call = state.call, None
    turn = self.env.tool_turn(state.traj, call, png)
    if isinstance(turn, Finish):
      return turn
    self._prefill(self.policy.append, slot, segment=turn)
    return None

  def _finish(self, state: _Slot, reason: Finish, done: list) -> None:
    traj = state.traj
    traj.finish_reason = reason
    traj.timings["wall_s"] = time.perf_counter() - state.t0
    traj.timings["tool_s"] = sum(c.latency_s for c in traj.tool_calls)
    done.append(traj)
    if self.on_finish is not None:
      self.on_finish(traj)

  async def run(self, records: Sequence, first_id: int = 0) -> list[Trajectory]:
    """All records' trajectories, in record order; record k's trajectory has id `first_id + k`
    (its sampling stream depends on the id)."""
    t_start = time.perf_counter()
    queue = list(enumerate(records, first_id))[::-1]
    free = list(range(self.policy.num_slots))[::-1]
    slots: dict[int, _Slot] = {}
    done: list[Trajectory] = []

    def end(slot: int, reason: Finish) -> None:
      self._finish(slots.pop(slot), reason, done)
      self.policy.finish(slot)
      free.append(slot)

    while queue or slots:
      while free and queue and (not slots or self.policy.can_admit()):  # Refill free slots.
        slot = free.pop()
        index, record = queue.pop()
        slots[slot] = await asyncio.to_thread(self._start, slot, index, record)
        if slots[slot].traj.finish_reason:
          end(slot, slots[slot].traj.finish_reason)
      decoding = [s for s, st in slots.items() if st.task is None]
      waiting = [st.task for st in slots.values() if st.task is not None]
      if decoding:
        budgets = [self.max_total_tokens - len(slots[s].traj.token_ids) for s in decoding]
        t = time.perf_counter()
        out = await asyncio.to_thread(self.policy.decode, decoding, budgets)
        self.stats.decode_s += time.perf_counter() - t
        self.stats.decode_calls += 1
        for s in decoding:
          state = slots[s]
          tokens, logprobs = out[s]
          state.traj.add(tokens, 1, logprobs)
          state.turn_tokens += [int(x) for x in tokens]
          outcome = self._after_decode(state)
          if isinstance(outcome, ToolCallRecord):
            state.call, outcome = outcome, None
            if state.call.status == CallStatus.OK:
              self.stats.tool_calls += 1
              state.task = asyncio.create_task(self.env.execute(state.traj, state.call))
            else:
              outcome = await asyncio.to_thread(self._tool_turn, s, state, None)
          if outcome is not None:
            end(s, outcome)
      elif waiting:
        t = time.perf_counter()
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        self.stats.idle_s += time.perf_counter() - t
      for s, state in list(slots.items()):  # Tool calls that came back resume their slot.
        if state.task is not None and state.task.done():
          png, state.task = state.task.result(), None
          outcome = await asyncio.to_thread(self._tool_turn, s, state, png)
          if outcome is not None:
            end(s, outcome)
    self.stats.wall_s = time.perf_counter() - t_start
    return sorted(done, key=lambda t: t.id)


async def run_agent(policy: Policy, records: Sequence, tokenizer, client, settings: image_lib.ImageSettings,
                    config: AgentConfig = AgentConfig(), *, on_finish=None, first_id: int = 0
                    ) -> tuple[list[Trajectory], AgentStats]:
  """Trajectories for `records` (in order, ids from `first_id`) under the CodeVision tool
  environment, and the run's statistics."""
  loop = AgentLoop(policy, CodeToolEnvironment(tokenizer, client, settings, config),
                   on_finish=on_finish)
  trajectories = await loop.run(records, first_id)
  return trajectories, loop.stats
