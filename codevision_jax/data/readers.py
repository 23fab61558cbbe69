"""Readers for conversation records in JSON, JSONL or Parquet -> `records.Conversation`.

Accepted record shapes:
  * LLaMA-Factory multimodal ShareGPT (CodeVision-SFT): `messages` with `role`/`content`, or
    `conversations` with `from`/`value`; `images` (paths relative to the data file, `{"bytes"}` /
    `{"path"}` dicts, or bytes); optional `tools` (JSON string or list).
  * verl RL/eval parquet rows: `prompt` (messages), `images`, `data_source`,
    `reward_model.ground_truth`, `extra_info` (question, answer, required_transforms / transform,
    gt_bbox / bbox).
Roles: system, user (human), assistant (gpt), tool (observation, function), and function_call
(an assistant turn whose content is the JSON call).

A bad record raises `RecordError` naming the file and record index; with `skip_bad=True` it is
skipped, logged, and counted in `stats`. Nothing is dropped silently.
"""

import base64
import collections
import json
import logging
import os
import re

from codevision_jax.data import records as records_lib
from codevision_jax.processing import code_tool

log = logging.getLogger(__name__)

ROLE_ALIASES = {
  "system": "system",
  "user": "user",
  "human": "user",
  "assistant": "assistant",
  "gpt": "assistant",
  "tool": "tool",
  "observation": "tool",
  "function": "tool",
  "function_call": "function_call",
}
_MAX_SKIP_WARNINGS = 10


class RecordError(ValueError):
  """A record that cannot be used; names the file, the record index and the reason."""

  def __init__(self, path, index, reason):
    self.path, self.index, self.reason = path, index, reason
    super().__init__(f"{path}: record {index}: {reason}")


def load_raw(path):
  """Yields (index, raw record or Exception) from a .json, .jsonl or .parquet file."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".jsonl":
    with open(path, encoding="utf-8") as f:
      index = 0
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          yield index, json.loads(line)
        except json.JSONDecodeError as e:
          yield index, ValueError(f"line {lineno} is not valid JSON: {e}")
        index += 1
  elif ext == ".json":
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if not isinstance(data, list):
      raise ValueError(f"{path}: a .json data file must hold a list of records, got {type(data).__name__}")
    yield from enumerate(data)
  elif ext == ".parquet":
    import pyarrow.parquet as pq  # Imported lazily: only Parquet readers need it.

    yield from enumerate(pq.read_table(path).to_pylist())
  else:
    raise ValueError(f"{path}: unsupported data file type {ext!r}; use .json, .jsonl or .parquet")


def _first(mapping, *keys):
  for key in keys:
    if mapping.get(key) is not None:
      return mapping[key]
  return None


_SUPPORTED_PARTS = (
  'a string, or a list of parts: {"type": "text", "text" or "value": ...}, {"type": "image"} or '
  '{"type": "image_url"} (an <image>, taken in order from the record\'s "images"), and in '
  'assistant turns {"type": "reasoning", "value": ...} (rendered <think>\\n...\\n</think>\\n\\n) '
  'and {"type": "tool_call", "value": {"name": ..., "arguments": ...} or its JSON}; the part '
  'formats of LLaMA-Factory\'s sharegpt/openai records and of its newer records such as '
  'reason_tool_use_demo_50.jsonl (docs/data.md)'
)
_TEXT_TYPES = (None, "text", "observation", "tool_result")


def _part_value(part, *keys):
  for key in keys:
    if isinstance(part.get(key), str):
      return part[key]
  return None


def _content_parts(content, where, role=None):
  """Message content -> (text with <image> placeholders, tool calls from tool_call parts).

  Accepts a string, or a list of content parts (OpenAI-style `text`, LLaMA-Factory's `value`);
  raises naming the part and the formats supported."""
  if content is None:
    return "", []
  if isinstance(content, str):
    return content, []
  if not isinstance(content, list):
    raise ValueError(
      f"{where}: content must be a string or a list of content parts, got "
      f"{type(content).__name__}; supported: {_SUPPORTED_PARTS}"
    )
  out, calls = [], []
  for k, part in enumerate(content):
    kind = part.get("type") if isinstance(part, dict) else None
    text = _part_value(part, "text", "value") if isinstance(part, dict) else None
    if isinstance(part, dict) and kind in ("image", "image_url"):
      out.append(code_tool.IMAGE_PLACEHOLDER)
    elif isinstance(part, dict) and kind in _TEXT_TYPES and text is not None:
      if calls:
        raise ValueError(
          f"{where}: content part {k} (text) follows a tool_call part; a turn's text must come before its tool calls"
        )
      out.append(text)
    elif (
      isinstance(part, dict) and kind in ("reasoning", "thinking") and text is not None and role in (None, "assistant")
    ):
      out.append(f"<think>\n{text}\n</think>\n\n")
    elif (
      isinstance(part, dict) and kind in ("tool_call", "function_call") and role in (None, "assistant", "function_call")
    ):
      if not calls and out and out[-1].endswith("</think>\n\n"):
        out[-1] = out[-1][:-1]  # The call's own "\n" follows: </think>\n\n<tool_call>, as LF's.
      value = part.get("value", part.get("function", part.get("tool_call")))
      if not isinstance(value, str):
        value = json.dumps(value)
      calls.extend(_tool_calls_from_json(value, f"{where}: content part {k}"))
    else:
      shown = repr(part) if len(repr(part)) <= 200 else repr(part)[:200] + "..."
      raise ValueError(
        f"{where}: unsupported content part {k} {shown}"
        + (f" in a {role} turn" if role else "")
        + f"; supported: {_SUPPORTED_PARTS}"
      )
  return "".join(out), calls


def _content_text(content, where):
  """Message content as text with <image> placeholders (accepts content part lists)."""
  text, calls = _content_parts(content, where)
  if calls:
    raise ValueError(f"{where}: tool_call parts are only allowed in assistant turns")
  return text


def _tool_calls_from_json(text, where):
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: a function_call turn must hold the call as JSON ({e.msg})") from None
  calls = obj if isinstance(obj, list) else [obj]
  out = []
  for call in calls:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
      raise ValueError(f"{where}: a function call needs a \"name\" and \"arguments\", got {call!r}")
    args = call.get("arguments", {})
    if isinstance(args, str):
      try:
        args = json.loads(args)
      except json.JSONDecodeError:
        pass  # Kept as the string the model wrote; rendered verbatim.
    out.append({"name": call["name"], "arguments": args})
  return out


def _normalise_messages(raw_messages, require_assistant):
  if not isinstance(raw_messages, list) or not raw_messages:
    raise ValueError("messages must be a non-empty list")
  messages = []
  for i, m in enumerate(raw_messages):
    where = f"message {i}"
    if not isinstance(m, dict):
      raise ValueError(f"{where}: must be an object, got {type(m).__name__}")
    raw_role = _first(m, "role", "from")
    role = ROLE_ALIASES.get(raw_role)
    if role is None:
      raise ValueError(f"{where}: unknown role {raw_role!r}; expected one of {sorted(ROLE_ALIASES)}")
    content, part_calls = _content_parts(_first(m, "content", "value"), where, role)
    msg = {"role": role, "content": content}
    if role == "function_call":
      if part_calls or code_tool.tool_call_blocks(content):
        msg = {"role": "assistant", "content": content}
      else:
        msg = {"role": "assistant", "content": "", "tool_calls": _tool_calls_from_json(content, where)}
    elif role == "assistant" and m.get("tool_calls"):
      msg["tool_calls"] = [_tool_calls_from_json(json.dumps(c.get("function", c)), where)[0] for c in m["tool_calls"]]
    if part_calls:
      if msg.get("tool_calls"):
        raise ValueError(f"{where}: tool calls given both as tool_call parts and otherwise")
      msg["tool_calls"] = (msg.get("tool_calls") or []) + part_calls
    if msg["role"] == "assistant":
      if not msg["content"].strip() and not msg.get("tool_calls"):
        raise ValueError(f"{where}: empty assistant turn (no text and no tool call)")
      if code_tool.IMAGE_PLACEHOLDER in msg["content"]:
        raise ValueError(f"{where}: an assistant turn cannot contain {code_tool.IMAGE_PLACEHOLDER}")
    messages.append(msg)
  for i, m in enumerate(messages):
    if m["role"] == "system" and i != 0:
      raise ValueError(f"message {i}: a system message is only allowed first")
  if require_assistant and not any(m["role"] == "assistant" for m in messages):
    raise ValueError("no assistant turn to train on")
  return messages


def _normalise_tools(raw):
  if raw is None or raw == "" or raw == []:
    return None
  if isinstance(raw, str):
    try:
      raw = json.loads(raw)
    except json.JSONDecodeError as e:
      raise ValueError(f"\"tools\" is not valid JSON ({e.msg})") from None
  if isinstance(raw, dict):
    raw = [raw]
  if not isinstance(raw, list):
    raise ValueError(f"\"tools\" must be a list of tool schemas, got {type(raw).__name__}")
  out = []
  for tool in raw:
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
      out.append(tool)
    elif isinstance(tool, dict) and "name" in tool:
      out.append({"type": "function", "function": tool})
    else:
      raise ValueError(f"not a tool schema: {tool!r}")
  return out


def _resolve_image(item, k, image_dir):
  if isinstance(item, dict):
    data, path = item.get("bytes"), item.get("path")
    if data is not None:
      return base64.b64decode(data) if isinstance(data, str) else bytes(data)
    item = path
  if isinstance(item, (bytes, bytearray)):
    return bytes(item)
  if not isinstance(item, str) or not item:
    raise ValueError(f"image {k}: expected a path, bytes or {{\"bytes\"|\"path\"}}, got {item!r}")
  path = item if os.path.isabs(item) else os.path.join(image_dir, item)
  if not os.path.isfile(path):
    raise ValueError(f"image {k}: missing image file {path!r}")
  return path


def _normalise_transforms(value):
  if value is None:
    return None
  if isinstance(value, str):
    value = json.loads(value) if value.startswith("[") else ([value] if value else [])
  return [str(v) for v in value]


def normalise_record(raw, image_dir, require_assistant=True):
  """One raw record (dict) -> Conversation; raises ValueError with the reason."""
  if not isinstance(raw, dict):
    raise ValueError(f"a record must be an object, got {type(raw).__name__}")
  raw_messages = _first(raw, "messages", "conversations", "prompt")
  if raw_messages is None:
    raise ValueError("no \"messages\", \"conversations\" or \"prompt\" key")
  if isinstance(raw_messages, str):
    raw_messages = json.loads(raw_messages)
  messages = _normalise_messages(raw_messages, require_assistant)
  raw_images = raw.get("images") or []
  if not isinstance(raw_images, list):
    raw_images = [raw_images]
  placeholders = sum(m["content"].count(code_tool.IMAGE_PLACEHOLDER) for m in messages)
  if placeholders != len(raw_images):
    raise ValueError(f"{placeholders} {code_tool.IMAGE_PLACEHOLDER} placeholders but {len(raw_images)} images")
  images = [_resolve_image(item, k, image_dir) for k, item in enumerate(raw_images)]
  extra_info = dict(raw.get("extra_info") or {})
  reward_model = raw.get("reward_model") or {}
  ground_truth = _first(raw, "ground_truth")
  if ground_truth is None:
    ground_truth = reward_model.get("ground_truth")
  box = _first(raw, "target_box", "gt_bbox")
  if box is None:
    box = _first(extra_info, "gt_bbox", "bbox", "target_box")
  transforms = _first(raw, "required_transforms")
  if transforms is None:
    transforms = _first(extra_info, "required_transforms", "transform")
  return records_lib.Conversation(
    messages=messages,
    images=images,
    tools=_normalise_tools(raw.get("tools")),
    ground_truth=None if ground_truth is None else str(ground_truth),
    required_transforms=_normalise_transforms(transforms),
    target_box=None if box is None else [float(v) for v in box],
    question=_first(raw, "question") or extra_info.get("question"),
    answer=_first(raw, "answer") or extra_info.get("answer"),
    data_source=raw.get("data_source"),
    extra=extra_info,
  )


def _reason_kind(reason):
  """A short, count-friendly form of a reason: numbers and quoted values removed."""
  reason = re.sub(r"'[^']*'|\"[^\"]*\"", "...", reason)
  return re.sub(r"\d+", "N", reason)[:80]


def read_records(path, skip_bad=False, require_assistant=True, image_dir=None, stats=None):
  """Reads every record of one data file -> list[Conversation].

  Relative image paths resolve against `image_dir` (default: the data file's folder). With
  `skip_bad`, bad records are skipped and logged; `stats` (a dict, if given) receives the counts
  `read`, `skipped` and `skip_reasons`.
  """
  image_dir = image_dir if image_dir is not None else os.path.dirname(os.path.abspath(path))
  out, skipped = [], collections.Counter()
  for index, raw in load_raw(path):
    try:
      if isinstance(raw, Exception):
        raise raw
      conv = normalise_record(raw, image_dir, require_assistant=require_assistant)
    except (ValueError, TypeError, KeyError) as e:
      err = RecordError(path, index, str(e))
      if not skip_bad:
        raise err from None
      skipped[_reason_kind(str(e))] += 1
      if sum(skipped.values()) <= _MAX_SKIP_WARNINGS:
        log.warning("skipping bad record: %s", err)
      continue
    conv.origin = f"{path}:{index}"
    out.append(conv)
  if skipped:
    log.warning(
      "%s: skipped %d bad records of %d (%s)",
      path,
      sum(skipped.values()),
      sum(skipped.values()) + len(out),
      dict(skipped),
    )
  if stats is not None:
    stats.update(read=len(out), skipped=sum(skipped.values()), skip_reasons=dict(skipped))
  return out


def read_sft_records(path, skip_bad=False, image_dir=None, stats=None):
  """SFT trajectories: every record must have at least one assistant turn."""
  return read_records(path, skip_bad=skip_bad, require_assistant=True, image_dir=image_dir, stats=stats)


def read_rl_records(path, skip_bad=False, image_dir=None, stats=None):
  """RL/eval prompts (verl parquet rows or prompt-only conversations)."""
  return read_records(path, skip_bad=skip_bad, require_assistant=False, image_dir=image_dir, stats=stats)
