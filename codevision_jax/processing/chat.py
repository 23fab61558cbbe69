"""Qwen chat formatting (one format per model family) with per-token loss masks.

Messages are dicts `{"role": "system" | "user" | "assistant" | "tool", "content": str}`; an
assistant message may also carry `"tool_calls": [{"name": ..., "arguments": {...}}, ...]` (an
OpenAI-style `{"function": {...}}` wrapper is accepted too). Images are `<image>` placeholders in
the content, matched in order to the images of the conversation.

Three chat formats, named as LLaMA-Factory names its templates (docs/chat_format.md has the facts):
`qwen2_vl` (Qwen2.5-VL: default system line "You are a helpful assistant."), `qwen3_vl` (Qwen3-VL
Thinking: no default system line; an assistant turn without `<think>`/`</think>` gets the empty
thought `<think>\n\n</think>\n\n`, which carries loss) and `qwen3_vl_nothink` (Qwen3-VL Instruct:
no default system line, content verbatim). The rendering follows `chat_template.template_for(fmt)`
character for character, so the token ids equal those of `tokenizer.apply_chat_template` with that
template once image pads are expanded. A tokenizer carries its format (`set_chat_format`, done by
`processing.tokenizer.load_tokenizer`); `tokenize_conversation` uses it unless told otherwise.
The loss mask is 1 on the tokens of assistant turns (content, tool calls and the closing
`<|im_end|>`), 0 elsewhere (including the `<|im_start|>assistant\\n` header and the newline after
`<|im_end|>`).
"""

import dataclasses
import json

import numpy as np

from codevision_jax.processing import code_tool

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."
GENERATION_PROMPT = "<|im_start|>assistant\n"
ROLES = ("system", "user", "assistant", "tool")
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """One model family's chat format (LLaMA-Factory's template of the same name)."""

  name: str
  default_system: str | None  # Inserted when a conversation has no system message.
  empty_thought: bool  # Assistant turns without <think>/</think> get EMPTY_THOUGHT (trained).


FORMATS = {
  "qwen2_vl": ChatFormat("qwen2_vl", DEFAULT_SYSTEM, False),
  "qwen3_vl": ChatFormat("qwen3_vl", None, True),
  "qwen3_vl_nothink": ChatFormat("qwen3_vl_nothink", None, False),
}
DEFAULT_FORMAT = "qwen2_vl"
_ATTR = "codevision_chat_format"
_UNSET = object()


def get_format(name):
  """The ChatFormat called `name` (one of FORMATS); raises naming the choices."""
  if isinstance(name, ChatFormat):
    return name
  if name not in FORMATS:
    raise ValueError(f"unknown chat format {name!r}; expected one of {sorted(FORMATS)} (set model.chat_format)")
  return FORMATS[name]


def set_chat_format(tokenizer, name):
  """Records on `tokenizer` the chat format its conversations are rendered in; returns it."""
  setattr(tokenizer, _ATTR, get_format(name).name)
  return tokenizer


def format_of(tokenizer):
  """The chat format `tokenizer` carries (`set_chat_format`), else DEFAULT_FORMAT."""
  return getattr(tokenizer, _ATTR, None) or DEFAULT_FORMAT


_TOOLS_HEADER = (
  "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
  "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
  "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
  "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
)


@dataclasses.dataclass(frozen=True)
class Rendered:
  """A conversation as text (one pad per image) and the character spans that carry loss."""

  text: str
  loss_spans: tuple  # ((start, end), ...) character ranges of assistant turns, `<|im_end|>` incl.
  num_images: int


@dataclasses.dataclass(frozen=True)
class TokenizedConversation:
  input_ids: np.ndarray  # int32 [T], image pads expanded
  loss_mask: np.ndarray  # int32 [T], 1 on assistant-turn tokens
  images: list  # the conversation's images, in the order of their pads
  image_token_counts: tuple  # pads per image


def tools_block(tools):
  """The text appended to the system message when tools are offered."""
  lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
  return _TOOLS_HEADER + lines + _TOOLS_FOOTER


def _tool_call_parts(call):
  call = call.get("function", call)
  return call["name"], call.get("arguments", {})


def _content(message, index):
  content = message.get("content")
  if content is None:
    return ""
  if not isinstance(content, str):
    raise TypeError(
      f"message {index}: content must be a string with <image> placeholders, got {type(content).__name__}"
    )
  return content


def _images_to_blocks(text):
  return text.replace(code_tool.IMAGE_PLACEHOLDER, VISION_BLOCK)


def _has_thought(content):
  return "<think>" in content or "</think>" in content


def render(messages, tools=None, add_generation_prompt=False, default_system=_UNSET, chat_format=DEFAULT_FORMAT):
  """Renders messages to Qwen chat text in `chat_format`; returns `Rendered`. Pure; raises on
  malformed messages. `default_system` overrides the format's default system line (None: none)."""
  fmt = get_format(chat_format)
  if default_system is _UNSET:
    default_system = fmt.default_system
  messages = list(messages)
  for i, m in enumerate(messages):
    if m.get("role") not in ROLES:
      raise ValueError(f"message {i}: unknown role {m.get('role')!r}; expected one of {ROLES}")
    if m["role"] == "assistant" and code_tool.IMAGE_PLACEHOLDER in _content(m, i):
      raise ValueError(f"message {i}: an assistant turn cannot contain an {code_tool.IMAGE_PLACEHOLDER}")
  out = []
  spans = []
  pos = 0

  def emit(text, loss=False):
    nonlocal pos
    if loss:
      spans.append((pos, pos + len(text)))
    out.append(text)
    pos += len(text)

  has_system = bool(messages) and messages[0]["role"] == "system"
  system = _content(messages[0], 0) if has_system else default_system
  if tools:
    block = tools_block(tools)
    if system is None:  # Qwen3: the tools block alone, without its leading blank line.
      emit(f"{IM_START}system\n{block[2:]}{IM_END}\n")
    else:
      emit(f"{IM_START}system\n{_images_to_blocks(system)}{block}{IM_END}\n")
  elif system is not None:
    emit(f"{IM_START}system\n{_images_to_blocks(system)}{IM_END}\n")
  n = len(messages)
  for i, m in enumerate(messages):
    role, content = m["role"], _content(m, i)
    if role == "system" and i == 0:
      continue
    if role in ("user", "system"):
      emit(f"{IM_START}{role}\n{_images_to_blocks(content)}{IM_END}\n")
    elif role == "assistant":
      calls = [code_tool.format_tool_call(*_tool_call_parts(c)) for c in m.get("tool_calls") or []]
      body = "\n".join(([content] if content or not calls else []) + calls)
      if fmt.empty_thought and not _has_thought(content):
        body = EMPTY_THOUGHT + body
      emit(GENERATION_PROMPT)
      emit(body + IM_END, loss=True)
      emit("\n")
    else:  # tool
      if i == 0 or messages[i - 1]["role"] != "tool":
        emit(f"{IM_START}user")
      emit(f"\n<tool_response>\n{_images_to_blocks(content)}\n</tool_response>")
      if i == n - 1 or messages[i + 1]["role"] != "tool":
        emit(f"{IM_END}\n")
  if add_generation_prompt:
    emit(GENERATION_PROMPT)
  text = "".join(out)
  return Rendered(text=text, loss_spans=tuple(spans), num_images=text.count(IMAGE_PAD))


def _expand_pads(ids, mask, pad_id, counts):
  where = np.flatnonzero(ids == pad_id)
  if len(where) != len(counts):
    raise ValueError(
      f"the text has {len(where)} image pads but {len(counts)} image token counts "
      "were given; each <image> placeholder needs exactly one image"
    )
  if any(c < 1 for c in counts):
    raise ValueError(f"image token counts must be >= 1, got {list(counts)}")
  repeats = np.ones(len(ids), dtype=np.int64)
  repeats[where] = counts
  return np.repeat(ids, repeats), np.repeat(mask, repeats)


def tokenize_text(tokenizer, text, loss_spans=(), image_token_counts=()):
  """Tokenises rendered text, marks tokens overlapping `loss_spans`, expands image pads.

  A token is marked when any of its characters lies in a span (a token that merges the header's
  newline with leading whitespace of the assistant content counts as assistant). Returns
  (input_ids int32 [T], loss_mask int32 [T]).
  """
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = np.asarray(enc["input_ids"], dtype=np.int32)
  mask = np.zeros(len(ids), dtype=np.int32)
  if loss_spans and len(ids):
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    for start, end in loss_spans:
      mask[(offsets[:, 0] < end) & (offsets[:, 1] > start)] = 1
  pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
  ids, mask = _expand_pads(ids, mask, pad_id, tuple(image_token_counts))
  return ids.astype(np.int32), mask.astype(np.int32)


def tokenize_conversation(
  tokenizer,
  messages,
  image_token_counts=(),
  tools=None,
  images=(),
  add_generation_prompt=False,
  default_system=_UNSET,
  chat_format=None,
):
  """Renders and tokenises a conversation -> TokenizedConversation.

  `image_token_counts[k]` is the number of `<|image_pad|>` tokens for the k-th `<image>` (see
  `processing.image.num_image_tokens`); `images` is passed through for the caller's convenience.
  `chat_format` defaults to the tokenizer's (`format_of`).
  """
  r = render(
    messages,
    tools=tools,
    add_generation_prompt=add_generation_prompt,
    default_system=default_system,
    chat_format=chat_format or format_of(tokenizer),
  )
  counts = tuple(int(c) for c in image_token_counts)
  if r.num_images != len(counts):
    raise ValueError(
      f"the conversation has {r.num_images} <image> placeholders but {len(counts)} image token counts were given"
    )
  if images and len(images) != len(counts):
    raise ValueError(f"{len(images)} images but {len(counts)} image token counts")
  ids, mask = tokenize_text(tokenizer, r.text, r.loss_spans, counts)
  return TokenizedConversation(input_ids=ids, loss_mask=mask, images=list(images), image_token_counts=counts)


def render_tool_turn(tool_contents, add_generation_prompt=True):
  """The text the agent loop appends after an assistant turn's `<|im_end|>`: the newline, one
  user turn holding every tool response, and (by default) the next generation prompt."""
  text = "\n" + IM_START + "user"
  for content in tool_contents:
    text += f"\n<tool_response>\n{_images_to_blocks(content)}\n</tool_response>"
  text += IM_END + "\n"
  return text + (GENERATION_PROMPT if add_generation_prompt else "")


def to_hf_messages(messages):
  """Our messages in the form HF chat templates take (content parts, OpenAI-style tool calls)."""
  out = []
  for i, m in enumerate(messages):
    content = _content(m, i)
    if code_tool.IMAGE_PLACEHOLDER in content:
      parts = []
      for k, piece in enumerate(content.split(code_tool.IMAGE_PLACEHOLDER)):
        if k:
          parts.append({"type": "image"})
        if piece:
          parts.append({"type": "text", "text": piece})
      content = parts
    hf = {"role": m["role"], "content": content}
    if m.get("tool_calls"):
      hf["tool_calls"] = [
        {"type": "function", "function": dict(zip(("name", "arguments"), _tool_call_parts(c)))} for c in m["tool_calls"]
      ]
    out.append(hf)
  return out


def chat_template_ids(tokenizer, messages, image_token_counts=(), tools=None, add_generation_prompt=False):
  """Token ids from the tokenizer's own `apply_chat_template` (pads expanded), for comparison."""
  ids = tokenizer.apply_chat_template(
    to_hf_messages(messages), tools=tools, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
  )
  ids = np.asarray(ids, dtype=np.int32).reshape(-1)
  pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
  ids, _ = _expand_pads(ids, np.zeros_like(ids), pad_id, tuple(image_token_counts))
  return ids.astype(np.int32)
