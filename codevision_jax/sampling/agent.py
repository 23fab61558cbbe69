"""The multi-turn agent loop: trajectories that think with images through code.

    policy = ModelPolicy(model, environment.stop_ids(tokenizer), num_slots=32)
    async with ExecutorClient(url) as client:
      trajectories, stats = await run_agent(policy, records, tokenizer, client, settings, config)

This module is the scheduler; what the model is told and how its tool calls run is the CodeVision
tool environment (`sampling.environment`). Each record's prompt goes into a free slot of the
policy. Slots are decoded together, in one batched device call per round. When a slot's turn
ends, the environment reads it: a tool call that is well formed runs on the executor service as
an asyncio task, and its result image is decoded and preprocessed in a worker thread
(`IMAGE_WORKERS`), while the other slots keep decoding; a malformed one gets its error response
at once. The tool turns that are ready after a round are appended together (one vision-tower
call and one chunked prefill across their slots: `append_many`) and those slots decode again.
Free slots take the next records, while the policy admits them (`can_admit`: a paged KV cache
with free pages); their prompts are prefilled together too (`start_many`).

A trajectory ends with a `trajectory.Finish` reason: `answer`, `eos`, `max_turns` (from the
environment), `max_tokens` (the total token budget), or `error` (the executor could not be
reached, or the record's prompt cannot be built or does not fit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Callable, Sequence

from codevision_jax.processing import image as image_lib
from codevision_jax.sampling.environment import AgentConfig, CodeToolEnvironment
from codevision_jax.sampling.policy import Policy
from codevision_jax.sampling.trajectory import CallStatus, Finish, ToolCallRecord, Trajectory


IMAGE_WORKERS = 4  # Threads that decode and preprocess tool results (off the event loop).


@dataclasses.dataclass
class AgentStats:
  """Wall time of a run and how the decoder spent it (seconds)."""

  wall_s: float = 0.0
  decode_s: float = 0.0
  prefill_s: float = 0.0
  idle_s: float = 0.0  # nothing to decode while tool calls were in flight
  decode_calls: int = 0
  tool_calls: int = 0
  preemptions: int = 0  # slots preempted for KV pages and prefilled again (a paged cache)

  @property
  def idle_fraction(self) -> float:
    return self.idle_s / self.wall_s if self.wall_s else 0.0


class _Slot:
  """Host state of one trajectory in flight."""

  def __init__(self, traj: Trajectory):
    self.traj = traj
    self.turn_tokens: list[int] = []
    self.call: ToolCallRecord | None = None
    self.task: asyncio.Task | None = None  # the call in flight: (png, its preprocessed image)
    self.t0 = time.perf_counter()


class AgentLoop:
  """Runs records through a policy and an environment; see the module docstring."""

  def __init__(
    self, policy: Policy, env: CodeToolEnvironment, *, on_finish: Callable[[Trajectory], None] | None = None
  ):
    self.policy, self.env, self.on_finish = policy, env, on_finish
    self.max_total_tokens = env.config.max_total_tokens
    self.stats = AgentStats()
    capacity = getattr(policy, "capacity", None)
    if capacity is not None and capacity < self.max_total_tokens:
      raise ValueError(
        f"the policy holds {capacity} tokens per slot, fewer than max_total_tokens "
        f"{self.max_total_tokens}; build it with capacity >= max_total_tokens"
      )

  def _start_all(self, starts: list) -> None:
    """Prefills new trajectories' prompts ((slot, trajectory id, Segment)), in one batched call
    when the policy has `start_many`."""
    t = time.perf_counter()
    items = [(slot, index, seg.input_ids, seg.pixel_values, seg.image_grid_thw) for slot, index, seg in starts]
    if hasattr(self.policy, "start_many"):
      self.policy.start_many(items)
    else:
      for item in items:
        self.policy.start(*item)
    self.stats.prefill_s += time.perf_counter() - t

  def _append_all(self, due: dict) -> None:
    """Appends the tool turns due ({slot: Segment}), in one batched call when the policy has
    `append_many`."""
    t = time.perf_counter()
    items = [(slot, seg.input_ids, seg.pixel_values, seg.image_grid_thw) for slot, seg in due.items()]
    if hasattr(self.policy, "append_many"):
      self.policy.append_many(items)
    else:
      for item in items:
        self.policy.append(*item)
    self.stats.prefill_s += time.perf_counter() - t

  async def _call(self, state: _Slot, pool: concurrent.futures.Executor):
    """A tool call's result: it runs on the executor (a well-formed call), then its image is
    decoded and preprocessed in a worker thread; (png, its `result_vision`) or (None, None)."""
    png = None
    if state.call.status == CallStatus.OK:
      png = await self.env.execute(state.traj, state.call)
    if png is None:
      return None, None
    return png, await asyncio.get_running_loop().run_in_executor(pool, self.env.result_vision, png)

  def _after_decode(self, state: _Slot) -> ToolCallRecord | Finish | None:
    """After a decode chunk: None to keep decoding, the turn's tool call, or a finish reason."""
    if state.turn_tokens and state.turn_tokens[-1] in self.env.stop_ids:
      outcome = self.env.end_turn(state.traj, state.turn_tokens)
      state.turn_tokens = []
      return outcome
    if len(state.traj.token_ids) >= self.max_total_tokens:
      return Finish.MAX_TOKENS
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
    preempted = getattr(self.policy, "preemptions", 0)
    queue = list(enumerate(records, first_id))[::-1]
    free = list(range(self.policy.num_slots))[::-1]
    slots: dict[int, _Slot] = {}
    done: list[Trajectory] = []

    def end(slot: int, reason: Finish) -> None:
      self._finish(slots.pop(slot), reason, done)
      self.policy.finish(slot)
      free.append(slot)

    with concurrent.futures.ThreadPoolExecutor(IMAGE_WORKERS) as pool:
      while queue or slots:
        starts, pending = [], 0
        while free and queue and (not (slots or starts) or self.policy.can_admit(pending)):
          slot = free.pop()  # Refill free slots.
          index, record = queue.pop()
          traj, prompt = await asyncio.to_thread(self.env.start, index, record)
          slots[slot] = _Slot(traj)
          if traj.finish_reason:
            end(slot, traj.finish_reason)
          else:
            starts.append((slot, index, prompt))
            pending += len(prompt.input_ids)
        if starts:
          await asyncio.to_thread(self._start_all, starts)
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
            if isinstance(outcome, ToolCallRecord):  # Its result comes back as a task.
              state.call, outcome = outcome, None
              self.stats.tool_calls += state.call.status == CallStatus.OK
              state.task = asyncio.create_task(self._call(state, pool))
            if outcome is not None:
              end(s, outcome)
          await asyncio.sleep(0)  # Malformed calls' tasks finish now.
        elif waiting:
          t = time.perf_counter()
          await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
          self.stats.idle_s += time.perf_counter() - t
        due = {}  # Tool calls that came back: their turns are appended together.
        for s, state in list(slots.items()):
          if state.task is not None and state.task.done():
            (png, vision), state.task = state.task.result(), None
            call, state.call = state.call, None
            turn = self.env.tool_turn(state.traj, call, png, vision)
            if isinstance(turn, Finish):
              end(s, turn)
            else:
              due[s] = turn
        if due:
          await asyncio.to_thread(self._append_all, due)
    self.stats.wall_s = time.perf_counter() - t_start
    self.stats.preemptions = getattr(self.policy, "preemptions", 0) - preempted
    return sorted(done, key=lambda t: t.id)


async def run_agent(
  policy: Policy,
  records: Sequence,
  tokenizer,
  client,
  settings: image_lib.ImageSettings,
  config: AgentConfig = AgentConfig(),
  *,
  on_finish=None,
  first_id: int = 0,
) -> tuple[list[Trajectory], AgentStats]:
  """Trajectories for `records` (in order, ids from `first_id`) under the CodeVision tool
  environment, and the run's statistics."""
  loop = AgentLoop(policy, CodeToolEnvironment(tokenizer, client, settings, config), on_finish=on_finish)
  trajectories = await loop.run(records, first_id)
  return trajectories, loop.stats
