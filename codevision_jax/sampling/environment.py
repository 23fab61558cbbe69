"""The CodeVision tool environment: what the policy is told, how its tool calls are read and run,
and what comes back into the conversation. Nothing here decodes; the agent loop
(`sampling.agent`) schedules trajectories over a policy and calls the environment at each turn
boundary:

    env = CodeToolEnvironment(tokenizer, client, settings, AgentConfig())
    traj, prompt = env.start(index, record)        # prompt: a Segment to prefill, or None (error)
    outcome = env.end_turn(traj, turn_tokens)      # a ToolCallRecord to handle, or a Finish
    png = await env.execute(traj, call)            # runs a well-formed call on the executor
    segment = env.tool_turn(traj, call, png)       # the tool turn to prefill, or a Finish

The prompt is CodeVision's system prompt and tool schema, then the record's messages before its
first assistant turn. A turn that ends in `</tool_call>` is parsed: a malformed call, an unknown
tool or a bad argument becomes an error tool response at once; a well-formed one runs on the
executor service. Its result image is kept at full resolution (later calls work on it) and shown
to the model resized to its pixel budget. A turn that ends in `<|im_end|>` or eos ends the
trajectory: `answer` if it holds `</answer>`, else `eos`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time

import aiohttp
import numpy as np
from PIL import Image

from codevision_jax.data import records as records_lib
from codevision_jax.processing import chat
from codevision_jax.processing import image as image_lib
from codevision_jax.processing import png as png_lib
from codevision_jax.processing import code_tool
from codevision_jax.sampling.trajectory import CallStatus, Finish, ToolCallRecord, Trajectory, TrajectoryImage
from codevision_jax.execution.client import ExecutorUnavailable

TOOL_CALL_END = "</tool_call>"


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  """The limits of one trajectory."""

  max_turns: int = 12  # assistant turns, as CodeVision
  max_total_tokens: int = 16384  # prompt + response, per trajectory
  max_tool_response_tokens: int = 10000
  max_images: int = 16  # input and tool images of one trajectory
  tool_timeout_s: float = 10.0
  max_stdout_chars: int = 512  # of the code's printed output shown to the model
  # CodeVision's system prompt and tool schema before the record's messages; False: the record's
  # user turns alone (how `data.synthetic_short` trains the tiny model, whose tokenizer makes the
  # schema ~1,000 tokens long).
  system_prompt: bool = True


@dataclasses.dataclass(frozen=True)
class Segment:
  """Tokens the policy did not sample (a prompt, a tool turn) and their images, to prefill."""

  input_ids: np.ndarray
  pixel_values: np.ndarray | None = None
  image_grid_thw: np.ndarray | None = None


def stop_ids(tokenizer) -> list[int]:
  """The tokens that end a policy turn: `</tool_call>`, `<|im_end|>` and the tokenizer's eos (if
  different)."""
  ids = [tokenizer.convert_tokens_to_ids(TOOL_CALL_END), tokenizer.convert_tokens_to_ids(chat.IM_END)]
  if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
    ids.append(int(tokenizer.eos_token_id))
  return ids


def yield_ids(tokenizer) -> list[int]:
  """The stop tokens after which a decode round ends for every slot: `</tool_call>`, so that the
  call is sent at once instead of after the round (`ModelPolicy(yield_ids=...)`)."""
  return [tokenizer.convert_tokens_to_ids(TOOL_CALL_END)]


def prompt_messages(record, system_prompt: bool = True) -> list[dict]:
  """CodeVision's system prompt (unless `system_prompt` is False), then the record's messages
  before its first assistant turn."""
  out = [{"role": "system", "content": code_tool.SYSTEM_PROMPT}] if system_prompt else []
  for m in record.messages:
    if m["role"] == "assistant":
      break
    if m["role"] != "system":
      out.append({"role": m["role"], "content": m.get("content") or ""})
  return out


class CodeToolEnvironment:
  """CodeVision's `code_image_tool` over an executor client; see the module docstring."""

  def __init__(self, tokenizer, client, settings: image_lib.ImageSettings, config: AgentConfig = AgentConfig()):
    self.tokenizer, self.client, self.settings, self.config = tokenizer, client, settings, config
    self.stop_ids = set(stop_ids(tokenizer))
    self.tool_call_end = tokenizer.convert_tokens_to_ids(TOOL_CALL_END)

  def _vision(self, images):
    """Pixel values, grids and image-token counts of PIL images (None, None, () for none)."""
    if not images:
      return None, None, ()
    pv, grid = self.settings.preprocess(list(images))
    return pv, grid, tuple(image_lib.num_image_tokens(grid, self.settings.merge_size))

  def start(self, index: int, record) -> tuple[Trajectory, Segment | None]:
    """A new trajectory for `record` and its prompt; None (and the trajectory finished with
    `error`) when the prompt cannot be built or does not fit."""
    meta = {
      k: getattr(record, k)
      for k in ("ground_truth", "required_transforms", "target_box", "question", "answer", "data_source")
    }
    traj = Trajectory(id=index, origin=getattr(record, "origin", ""), metadata=meta)
    try:
      messages = prompt_messages(record, self.config.system_prompt)
      n_images = sum(m["content"].count(code_tool.IMAGE_PLACEHOLDER) for m in messages)
      images = [
        records_lib.load_image(x, origin=getattr(record, "origin", "") or None) for x in record.images[:n_images]
      ]
      pv, grid, counts = self._vision(images)
      tools = [code_tool.CODE_IMAGE_TOOL] if self.config.system_prompt else None
      tok = chat.tokenize_conversation(self.tokenizer, messages, counts, tools=tools, add_generation_prompt=True)
    except (ValueError, TypeError, OSError) as e:  # A bad record ends as an error, not the run.
      traj.error = f"record {traj.origin or index}: {type(e).__name__}: {e}"
      traj.finish_reason = Finish.ERROR
      return traj, None
    for im, g in zip(images, [] if grid is None else grid.tolist()):
      traj.images.append(TrajectoryImage(png_lib.encode(im), g, "input"))
    traj.add(tok.input_ids, 0)
    traj.prompt_length = len(tok.input_ids)
    if len(tok.input_ids) >= self.config.max_total_tokens:
      traj.error = (
        f"the prompt has {len(tok.input_ids)} tokens, over max_total_tokens "
        f"{self.config.max_total_tokens} (agent.max_total_tokens): raise it, or "
        "shorten the prompt"
      )
      traj.finish_reason = Finish.ERROR
      return traj, None
    return traj, Segment(tok.input_ids, pv, grid)

  def end_turn(self, traj: Trajectory, turn_tokens) -> ToolCallRecord | Finish:
    """A turn the policy ended with a stop token: the tool call it makes (parsed; its status
    says whether to execute it), or how the trajectory ends."""
    traj.num_turns += 1
    text = self.tokenizer.decode(list(turn_tokens), skip_special_tokens=False)
    if turn_tokens[-1] != self.tool_call_end:
      return Finish.ANSWER if "</answer>" in text else Finish.EOS
    if traj.num_turns >= self.config.max_turns:
      return Finish.MAX_TURNS
    blocks = code_tool.tool_call_blocks(text)
    raw = blocks[-1].strip() if blocks else text
    parsed = code_tool.parse_tool_call(text, len(traj.images))
    if isinstance(parsed, code_tool.ParseError):
      return ToolCallRecord(turn=traj.num_turns, raw=raw, status=CallStatus.PARSE_ERROR, error=parsed.message)
    call = ToolCallRecord(
      turn=traj.num_turns, raw=raw, code=parsed.code, description=parsed.description, image_index=parsed.image_index
    )
    if len(traj.images) >= self.config.max_images:
      call.status, call.error = (
        CallStatus.LIMIT,
        (f"this conversation already has {len(traj.images)} images, the limit; answer with what you have"),
      )
    return call

  async def execute(self, traj: Trajectory, call: ToolCallRecord) -> bytes | None:
    """Runs a well-formed call on the executor; returns the result image (PNG) or None, with the
    call's status, error, ops, stdout and latency filled in."""
    t = time.perf_counter()
    try:
      res = await self.client.execute(
        call.code, [im.png for im in traj.images], call.image_index, timeout_s=self.config.tool_timeout_s
      )
    except (ExecutorUnavailable, ValueError, aiohttp.ClientError, asyncio.TimeoutError) as e:
      call.status, call.error = CallStatus.EXECUTOR_ERROR, f"{type(e).__name__}: {e}"
      return None
    finally:
      call.latency_s = time.perf_counter() - t
    call.ops, call.stdout = list(res.ops), res.stdout
    if not res.ok:
      call.status, call.error = CallStatus.CODE_ERROR, res.error_text()
    elif not res.images:
      call.status, call.error = (
        CallStatus.CODE_ERROR,
        ("the code produced no image: leave the output image in `result`"),
      )
    else:
      call.result_map = res.result_maps[0] if res.result_maps else None
      return res.images[0]
    return None

  def result_vision(self, png: bytes):
    """The result image's pixel values, grid and token count (`_vision`), or the preprocessing
    error: the host work of a tool turn (PNG decoding, resizing, patches), safe to run in a worker
    thread (no tokenizer)."""
    image = Image.open(io.BytesIO(png))
    image.load()
    try:
      return self._vision([image.convert("RGB")])
    except image_lib.ImagePreprocessingError as e:
      return e

  def tool_turn(self, traj: Trajectory, call: ToolCallRecord, png: bytes | None, vision=None) -> Segment | Finish:
    """Records the call and builds the tool turn that answers it (its result image, or its error)
    up to the next generation prompt; a Finish when the trajectory cannot go on. `vision`: the
    png's `result_vision` when already computed."""
    cfg = self.config
    traj.tool_calls.append(call)
    if call.status == CallStatus.EXECUTOR_ERROR:
      traj.error = call.error
      return Finish.ERROR
    pv = grid = None
    counts = ()
    if png is not None:
      vision = self.result_vision(png) if vision is None else vision
      if isinstance(vision, image_lib.ImagePreprocessingError):
        call.status, call.error = CallStatus.CODE_ERROR, f"the result image cannot be used: {vision}"
        png = None
      else:
        pv, grid, counts = vision
      if png is not None and counts[0] + 32 > cfg.max_tool_response_tokens:
        call.status = CallStatus.LIMIT
        call.error = (
          f"the result image needs {counts[0]} tokens, over the limit of "
          f"{cfg.max_tool_response_tokens}; crop or downscale it"
        )
        png, pv, grid, counts = None, None, None, ()
    stdout = (call.stdout or "")[: cfg.max_stdout_chars].strip()
    if png is not None:
      call.result_image_index = len(traj.images)
      content = code_tool.tool_response_content(call.result_image_index, stdout or None)
    else:
      content = f"Error: {call.error}"
    ids, _ = chat.tokenize_text(
      self.tokenizer, chat.IM_END + chat.render_tool_turn([content]), image_token_counts=counts
    )
    if len(traj.token_ids) + len(ids) >= cfg.max_total_tokens:
      return Finish.MAX_TOKENS
    if png is not None:
      traj.images.append(TrajectoryImage(png, grid[0].tolist(), "tool"))
    traj.add(ids, 0)
    return Segment(ids, pv, grid)
