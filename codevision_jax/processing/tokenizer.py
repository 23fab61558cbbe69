"""Tokenizers: load a Qwen tokenizer from a local directory, or build a tiny Qwen-like one.

`build_tiny_tokenizer(out_dir)` writes a byte-level BPE tokenizer in HF format with Qwen2.5-VL's
pre-tokenizer, its special and added tokens (same strings and flags, ids placed right after a small
vocabulary) and our chat template of a chat format. Tests, `make demo` and benchmarks use it;
nothing is downloaded.

`load_tokenizer(path, chat_format=None, model_type=None)` loads a tokenizer and records on it the
chat format conversations are rendered in (`chat.set_chat_format`): the one named, else the one of
the model family (`model_type`, or `config.json` beside the tokenizer), else `qwen2_vl`. It logs
the choice, and warns when the tokenizer's own chat template renders a test conversation
differently from that format (docs/chat_format.md).
"""

import json
import logging
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from codevision_jax.processing import chat, chat_template

log = logging.getLogger(__name__)

# Qwen2.5-VL's added tokens in id order, with their `special` flag (as in its tokenizer_config).
QWEN_ADDED_TOKENS = (
  ("<|endoftext|>", True),
  ("<|im_start|>", True),
  ("<|im_end|>", True),
  ("<|object_ref_start|>", True),
  ("<|object_ref_end|>", True),
  ("<|box_start|>", True),
  ("<|box_end|>", True),
  ("<|quad_start|>", True),
  ("<|quad_end|>", True),
  ("<|vision_start|>", True),
  ("<|vision_end|>", True),
  ("<|vision_pad|>", True),
  ("<|image_pad|>", True),
  ("<|video_pad|>", True),
  ("<tool_call>", False),
  ("</tool_call>", False),
  ("<|fim_prefix|>", False),
  ("<|fim_middle|>", False),
  ("<|fim_suffix|>", False),
  ("<|fim_pad|>", False),
  ("<|repo_name|>", False),
  ("<|file_sep|>", False),
)

PRETOKENIZE_REGEX = (
  r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
  r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A little text in the register of our conversations, so the merges are not all junk.
_TRAINING_TEXT = """\
<think>The image looks rotated. I will rotate it back and crop the region with the text.</think>
{"name": "code_image_tool", "arguments": {"code": "result = image.rotate(270, expand=True)",
"description": "Rotate the image upright.", "image_index": 0}}
<answer>42</answer> The word in the picture is HELLO. What number is shown?
Which way does the arrow point?
import numpy as np
img = image.crop((10, 20, 110, 90)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
result = img.resize((img.width * 2, img.height * 2))
You are a helpful assistant. Think step by step, then call the tool or answer the question.
The quick brown fox jumps over the lazy dog. 0123456789 left right up down bar chart value.
"""


# The chat format of each model family (config.json's model_type); Qwen3-VL: see resolve_chat_format.
FAMILY_FORMATS = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl"}

# The conversation the tokenizer's own template is compared on (with a tool offered): no system
# message (the families differ there), a user turn with an image, an assistant turn with a thought
# and a tool call, a tool response with an image, the answer: CodeVision's shape.
_PROBE_TOOL = {
  "type": "function",
  "function": {
    "name": "code_image_tool",
    "description": "Runs Python on an image.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
  },
}
_PROBE = [
  {"role": "user", "content": "<image>\nWhat does the sign say?"},
  {
    "role": "assistant",
    "content": "<think>\nIt is upside down.\n</think>\n\nI will turn it.",
    "tool_calls": [{"name": "code_image_tool", "arguments": {"code": "result = image.rotate(180)"}}],
  },
  {"role": "tool", "content": "Image 1: <image>"},
  {"role": "assistant", "content": "<think>\nNow it reads STOP.\n</think>\n\n<answer>STOP</answer>"},
]


def _model_type_beside(path):
  config = os.path.join(path, "config.json")
  if not os.path.exists(config):
    return None
  try:
    with open(config, encoding="utf-8") as f:
      return json.load(f).get("model_type")
  except (OSError, ValueError):
    return None


def resolve_chat_format(tokenizer, chat_format=None, model_type=None, path=None):
  """(format name, why): `chat_format` when given; else the family's format from `model_type`
  (or `path`'s config.json), Qwen3-VL being Thinking (`qwen3_vl`) unless the tokenizer's own
  template has no `<think>` (Instruct: `qwen3_vl_nothink`); else the format whose template the
  tokenizer carries; else `qwen2_vl`."""
  if chat_format:
    return chat.get_format(chat_format).name, "model.chat_format"
  model_type = model_type or (path and _model_type_beside(path))
  own = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
  if model_type in FAMILY_FORMATS:
    name = FAMILY_FORMATS[model_type]
    if name == "qwen3_vl" and own is not None and "<think>" not in own:
      return "qwen3_vl_nothink", f"model_type {model_type}, no <think> in the tokenizer's template"
    return name, f"model_type {model_type}"
  for name, template in chat_template.TEMPLATES.items():
    if own == template:
      return name, "the tokenizer's chat template"
  return chat.DEFAULT_FORMAT, "default"


def template_mismatch(tokenizer, chat_format):
  """None when the tokenizer's own chat template renders the probe conversation exactly as
  `chat_format` does (or it has none); else a sentence saying where they differ."""
  own = getattr(tokenizer, "chat_template", None)
  if not isinstance(own, str):
    return None
  ours = chat.render(_PROBE, tools=[_PROBE_TOOL], chat_format=chat_format).text
  try:
    theirs = tokenizer.apply_chat_template(chat.to_hf_messages(_PROBE), tools=[_PROBE_TOOL], tokenize=False)
  except Exception as e:  # A template that cannot render our messages at all.  # noqa: BLE001
    return f"the tokenizer's chat template cannot render a test conversation ({e})"
  if theirs == ours:
    return None
  at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
  return (
    f"the tokenizer's own chat template renders a test conversation differently from chat "
    f"format {chat_format!r} from character {at}: ours {ours[at : at + 40]!r}, its "
    f"{theirs[at : at + 40]!r}; training uses {chat_format!r} (docs/chat_format.md)"
  )


def load_tokenizer(path, chat_format=None, model_type=None):
  """Loads an HF tokenizer from a local directory (a Qwen checkpoint or build_tiny_tokenizer's)
  and records its chat format (`resolve_chat_format`); logs it, and warns when the tokenizer's
  own template renders differently."""
  from transformers import AutoTokenizer  # Imported lazily: transformers is slow to import.

  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"tokenizer directory {path!r} does not exist; pass a local checkpoint "
      "directory or build one with build_tiny_tokenizer(out_dir)"
    )
  tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
  name, why = resolve_chat_format(tokenizer, chat_format, model_type, path)
  chat.set_chat_format(tokenizer, name)
  log.info(
    "chat format %s (from %s); model.chat_format chooses another (%s)", name, why, ", ".join(sorted(chat.FORMATS))
  )
  mismatch = template_mismatch(tokenizer, name)
  if mismatch:
    log.warning("%s: %s", path, mismatch)
  return tokenizer


def _train_bpe(vocab_size):
  tok = Tokenizer(
    models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
  )
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ]
  )
  tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=2,
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=[],
  )
  tok.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
  return tok


def build_tiny_tokenizer(out_dir, vocab_size=384, chat_format=chat.DEFAULT_FORMAT):
  """Writes a small Qwen-like tokenizer (HF format) to `out_dir` and returns `out_dir`; its chat
  template is that of `chat_format`.

  The BPE part has at most `vocab_size` entries (the 256 byte symbols plus merges); the Qwen added
  tokens follow with consecutive ids, so the total is about `vocab_size + 22`. Deterministic.
  """
  if vocab_size < 257:
    raise ValueError(f"vocab_size must be > 256 (the byte alphabet), got {vocab_size}")
  tok = _train_bpe(vocab_size)
  tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  added_decoder = {}
  for text, special in QWEN_ADDED_TOKENS:
    added_decoder[str(tok.token_to_id(text))] = {
      "content": text,
      "lstrip": False,
      "normalized": False,
      "rstrip": False,
      "single_word": False,
      "special": special,
    }
  config = {
    "add_bos_token": False,
    "add_prefix_space": False,
    "added_tokens_decoder": added_decoder,
    "additional_special_tokens": [t for t, s in QWEN_ADDED_TOKENS[1:] if s],
    "bos_token": None,
    "chat_template": chat_template.template_for(chat_format),
    "clean_up_tokenization_spaces": False,
    "eos_token": "<|im_end|>",
    "errors": "replace",
    "model_max_length": 131072,
    "pad_token": "<|endoftext|>",
    "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer",
    "unk_token": None,
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
  return out_dir
