"""The multi-turn agent loop: trajectories that think with images through code.

    policy = ModelPolicy(model, stop_ids(tokenizer), num_slots=32)
    async with ExecutorClient(url) as client:
      trajectories, stats = await run_agent(policy, records, tokenizer, client, settings)

Each record's prompt (its messages before the first assistant turn, under CodeVision's system
prompt and tool schema) goes into a free slot of the policy. Slots are decoded together, in one
batched device call per round. When a slot's turn ends in `</tool_call>`, the call is parsed: a
malformed call becomes an error tool response at once, a valid one runs on the executor service
as an asyncio task while the other slots keep decoding. When the call returns, its image (kept at
full resolution for later calls) is resized to the model's pixel budget, preprocessed, and the
tool turn (`<|im_end|>`, the user turn with the tool response, the next generation prompt) is
appended to the slot by chunked prefill; decoding resumes. A finished slot takes the next record.

A trajectory ends with a finish reason: `answer` (a turn closed with `<|im_end|>` or eos after an
`<answer>`), `eos` (closed without one), `max_turns`, `max_tokens` (the total token budget), or
`error` (the executor could not be reached, the record's prompt cannot be built or does not
fit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from typing import Callable, Sequence

import aiohttp
import numpy as np
from PIL import Image

from codevision_jax.data import records as records_lib
from codevision_jax.processing import chat
from codevision_jax.processing import image as image_lib
from codevision_jax.processing import tools as tools_lib
from codevision_jax.sampling.trajectory import ToolCallRecord, Trajectory, TrajectoryImage
from codevision_jax.tools.executor_client import ExecutorUnavailable
from executor import png as png_lib

TOOL_CALL_END = "</tool_call>"


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  max_turns: int = 12  # assistant turns, as CodeVision
  max_total_tokens: int = 16384  # prompt + response, per trajectory
  max_tool_response_tokens: int = 10000
  max_images: int = 16  # input and tool images of one trajectory
  tool_timeout_s: float = 10.0
  max_stdout_chars: int = 512  # of the code's printed output shown to the model


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


def stop_ids(tokenizer) -> list[int]:
  """`</tool_call>`, `<|im_end|>` and the tokenizer's eos (if different)."""
  ids = [tokenizer.convert_tokens_to_ids(TOOL_CALL_END), tokenizer.convert_tokens_to_ids(chat.IM_END)]
  if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
    ids.append(int(tokenizer.eos_token_id))
  return ids


def prompt_messages(record) -> list[dict]:
  """CodeVision's system prompt, then the record's messages before its first assistant turn."""
  out = [{"role": "system", "content": tools_lib.SYSTEM_PROMPT}]
  for m in record.messages:
    if m["role"] == "assistant":
      break
    if m["role"] != "system":
      out.append({"role": m["role"], "content": m.get("content") or ""})
  return out


def _png(image: Image.Image) -> bytes:
  return png_lib.encode(image)


class _Slot:
  """Host state of one trajectory in flight."""

  def __init__(self, traj: Trajectory):
    self.traj = traj
    self.turn_tokens: list[int] = []
    self.task: asyncio.Task | None = None
    self.call: ToolCallRecord | None = None
    self.result_png: bytes | None = None
    self.t0 = time.perf_counter()


class AgentLoop:
  """Runs records through a policy and the executor; see the module docstring."""

  def __init__(self, policy, tokenizer, client, settings: image_lib.ImageSettings,
               config: AgentConfig = AgentConfig(), *,
               on_finish: Callable[[Trajectory], None] | None = None):
    self.policy, self.tokenizer, self.client = policy, tokenizer, client
    self.settings, self.config, self.on_finish = settings, config, on_finish
    self.stop = set(stop_ids(tokenizer))
    self.tool_call_end = tokenizer.convert_tokens_to_ids(TOOL_CALL_END)
    self.stats = AgentStats()
    capacity = getattr(policy, "capacity", None)
    if capacity is not None and capacity < config.max_total_tokens:
      raise ValueError(f"the policy holds {capacity} tokens per slot, fewer than max_total_tokens "
                       f"{config.max_total_tokens}; build it with capacity >= max_total_tokens")

  # ---- images and tokens ------------------------------------------------------------------

  def _vision(self, images: Sequence[Image.Image]):
    if not images:
      return None, None, ()
    pv, grid = self.settings.preprocess(list(images))
    return pv, grid, tuple(image_lib.num_image_tokens(grid, self.settings.merge_size))

  def _start(self, slot: int, index: int, record) -> _Slot:
    meta = {k: getattr(record, k) for k in ("ground_truth", "required_transforms", "target_box",
                                           "question", "answer", "data_source")}
    traj = Trajectory(id=index, origin=getattr(record, "origin", ""), metadata=meta)
    state = _Slot(traj)
    try:
      messages = prompt_messages(record)
      n_images = sum(m["content"].count(tools_lib.IMAGE_PLACEHOLDER) for m in messages)
      images = [records_lib.load_image(x) for x in record.images[:n_images]]
      pv, grid, counts = self._vision(images)
      tok = chat.tokenize_conversation(self.tokenizer, messages, counts,
                                       tools=[tools_lib.CODE_IMAGE_TOOL], add_generation_prompt=True)
    except (ValueError, TypeError, OSError) as e:  # A bad record ends as an error, not the run.
      traj.error = f"record {traj.origin or index}: {type(e).__name__}: {e}"
      traj.finish_reason = "error"
      return state
    for im, g in zip(images, [] if grid is None else grid.tolist()):
      traj.images.append(TrajectoryImage(_png(im), g, "input"))
    traj.add(tok.input_ids, 0)
    traj.prompt_length = len(tok.input_ids)
    if len(tok.input_ids) >= self.config.max_total_tokens:
      traj.error = (f"the prompt has {len(tok.input_ids)} tokens, over max_total_tokens "
                    f"{self.config.max_total_tokens}")
      traj.finish_reason = "error"
      return state
    t = time.perf_counter()
    self.policy.start(slot, index, tok.input_ids, pv, grid)
    self.stats.prefill_s += time.perf_counter() - t
    return state

  # ---- turns -------------------------------------------------------------------------------

  def _end_turn(self, state: _Slot) -> str | None:
    """After a decode chunk: None to keep decoding, "tool" when a call must be handled, or a
    finish reason."""
    traj, cfg = state.traj, self.config
    last = state.turn_tokens[-1] if state.turn_tokens else None
    if last in self.stop:
      traj.num_turns += 1
      text = self.tokenizer.decode(state.turn_tokens, skip_special_tokens=False)
      state.turn_tokens = []
      if last == self.tool_call_end:
        if traj.num_turns >= cfg.max_turns:
          return "max_turns"
        state.call = self._parse(traj, text)
        return "tool"
      return "answer" if "</answer>" in text else "eos"
    if len(traj.token_ids) >= cfg.max_total_tokens:
      return "max_tokens"
    return None

  def _parse(self, traj: Trajectory, text: str) -> ToolCallRecord:
    blocks = tools_lib.tool_call_blocks(text)
    raw = blocks[-1].strip() if blocks else text
    parsed = tools_lib.parse_tool_call(text, len(traj.images))
    if isinstance(parsed, tools_lib.ParseError):
      return ToolCallRecord(turn=traj.num_turns, raw=raw, status="parse_error", error=parsed.message)
    call = ToolCallRecord(turn=traj.num_turns, raw=raw, code=parsed.code,
                          description=parsed.description, image_index=parsed.image_index)
    if len(traj.images) >= self.config.max_images:
      call.status, call.error = "limit", (f"this conversation already has {len(traj.images)} "
                                         f"images, the limit; answer with what you have")
    return call

  async def _execute(self, state: _Slot) -> None:
    traj, call = state.traj, state.call
    t = time.perf_counter()
    try:
      res = await self.client.execute(call.code, [im.png for im in traj.images], call.image_index,
                                      timeout_s=self.config.tool_timeout_s)
    except (ExecutorUnavailable, ValueError, aiohttp.ClientError, asyncio.TimeoutError) as e:
      call.status, call.error = "executor_error", f"{type(e).__name__}: {e}"
      return
    finally:
      call.latency_s = time.perf_counter() - t
    call.ops, call.stdout = list(res.ops), res.stdout
    if not res.ok:
      call.status, call.error = "code_error", res.error_text()
    elif not res.images:
      call.status, call.error = "code_error", ("the code produced no image: leave the output image "
                                               "in `result`")
    else:
      state.result_png = res.images[0]

  def _tool_turn(self, slot: int, state: _Slot) -> str | None:
    """Appends the tool turn of `state.call`; returns a finish reason if the trajectory ends."""
    traj, call, cfg = state.traj, state.call, self.config
    traj.tool_calls.append(call)
    if call.status == "executor_error":
      traj.error = call.error
      return "error"
    png, state.result_png = state.result_png, None
    pv = grid = None
    counts = ()
    stdout = (call.stdout or "")[:cfg.max_stdout_chars].strip()
    if png is not None:
      image = Image.open(io.BytesIO(png))
      image.load()
      try:
        pv, grid, counts = self._vision([image.convert("RGB")])
      except image_lib.ImagePreprocessingError as e:
        call.status, call.error = "code_error", f"the result image cannot be used: {e}"
        png = None
      if png is not None and counts[0] + 32 > cfg.max_tool_response_tokens:
        call.status = "limit"
        call.error = (f"the result image needs {counts[0]} tokens, over the limit of "
                      f"{cfg.max_tool_response_tokens}; crop or downscale it")
        png, pv, grid, counts = None, None, None, ()
    if png is not None:
      call.result_image_index = len(traj.images)
      content = tools_lib.tool_response_content(call.result_image_index, stdout or None)
    else:
      content = f"Error: {call.error}"
    text = chat.IM_END + chat.render_tool_turn([content])
    ids, _ = chat.tokenize_text(self.tokenizer, text, image_token_counts=counts)
    if len(traj.token_ids) + len(ids) >= cfg.max_total_tokens:
      return "max_tokens"
    if png is not None:
      traj.images.append(TrajectoryImage(png, grid[0].tolist(), "tool"))
    traj.add(ids, 0)
    t = time.perf_counter()
    self.policy.append(slot, ids, pv, grid)
    self.stats.prefill_s += time.perf_counter() - t
    return None

  def _finish(self, state: _Slot, reason: str, done: list) -> None:
    traj = state.traj
    traj.finish_reason = reason
    traj.timings["wall_s"] = time.perf_counter() - state.t0
    traj.timings["tool_s"] = sum(c.latency_s for c in traj.tool_calls)
    done.append(traj)
    if self.on_finish is not None:
      self.on_finish(traj)

  # ---- the loop ----------------------------------------------------------------------------

  async def run(self, records: Sequence) -> list[Trajectory]:
    """All records' trajectories, in record order."""
    t_start = time.perf_counter()
    queue = list(enumerate(records))[::-1]
    free = list(range(self.policy.num_slots))[::-1]
    slots: dict[int, _Slot] = {}
    done: list[Trajectory] = []
    while queue or slots:
      while free and queue:  # Refill free slots.
        slot = free.pop()
        index, record = queue.pop()
        state = await asyncio.to_thread(self._start, slot, index, record)
        if state.traj.finish_reason:
          self._finish(state, state.traj.finish_reason, done)
          free.append(slot)
        else:
          slots[slot] = state
      decoding = [s for s, st in slots.items() if st.task is None]
      waiting = [st.task for st in slots.values() if st.task is not None]
      if decoding:
        budgets = [self.config.max_total_tokens - len(slots[s].traj.token_ids) for s in decoding]
        t = time.perf_counter()
        out = await asyncio.to_thread(self.policy.decode, decoding, budgets)
        self.stats.decode_s += time.perf_counter() - t
        self.stats.decode_calls += 1
        for s in decoding:
          state = slots[s]
          tokens, logprobs = out[s]
          state.traj.add(tokens, 1, logprobs)
          state.turn_tokens += [int(x) for x in tokens]
          reason = self._end_turn(state)
          if reason == "tool":
            if state.call.status == "ok":
              self.stats.tool_calls += 1
              state.task = asyncio.create_task(self._execute(state))
            else:
              reason = await asyncio.to_thread(self._tool_turn, s, state)
          if reason not in (None, "tool"):
            self._finish(slots.pop(s), reason, done)
            free.append(s)
      elif waiting:
        t = time.perf_counter()
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        self.stats.idle_s += time.perf_counter() - t
      for s, state in list(slots.items()):  # Tool calls that came back resume their slot.
        if state.task is not None and state.task.done():
          state.task.result()
          state.task = None
          reason = await asyncio.to_thread(self._tool_turn, s, state)
          if reason is not None:
            self._finish(slots.pop(s), reason, done)
            free.append(s)
    self.stats.wall_s = time.perf_counter() - t_start
    return sorted(done, key=lambda t: t.id)


async def run_agent(policy, records: Sequence, tokenizer, client, settings: image_lib.ImageSettings,
                    config: AgentConfig = AgentConfig(), *, on_finish=None
                    ) -> tuple[list[Trajectory], AgentStats]:
  """Trajectories for `records` (in order) and the run's statistics."""
  loop = AgentLoop(policy, tokenizer, client, settings, config, on_finish=on_finish)
  trajectories = await loop.run(records)
  return trajectories, loop.stats


def text_of(tokenizer, trajectory: Trajectory) -> str:
  """The whole trajectory as text (image pads collapsed to one per image)."""
  ids = np.asarray(trajectory.token_ids)
  pad = tokenizer.convert_tokens_to_ids(chat.IMAGE_PAD)
  keep = np.ones(len(ids), bool)
  keep[1:] = ~((ids[1:] == pad) & (ids[:-1] == pad))
  return tokenizer.decode(ids[keep].tolist(), skip_special_tokens=False)
