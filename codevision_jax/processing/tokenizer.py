"""Tokenizers: load a Qwen tokenizer from a local directory, or build a tiny Qwen-like one.

`build_tiny_tokenizer(out_dir)` writes a byte-level BPE tokenizer in HF format with Qwen2.5-VL's
pre-tokenizer, its special and added tokens (same strings and flags, ids placed right after a small
vocabulary) and our chat template. Tests, `make demo` and benchmarks use it; nothing is downloaded.
"""

import json
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from codevision_jax.processing import chat_template

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


def load_tokenizer(path):
  """Loads an HF tokenizer from a local directory (a Qwen checkpoint or build_tiny_tokenizer's)."""
  from transformers import AutoTokenizer  # Imported lazily: transformers is slow to import.
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory {path!r} does not exist; pass a local checkpoint "
                            "directory or build one with build_tiny_tokenizer(out_dir)")
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _train_bpe(vocab_size):
  tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                             fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
  ])
  tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                            use_regex=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=[])
  tok.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
  return tok


def build_tiny_tokenizer(out_dir, vocab_size=384):
  """Writes a small Qwen-like tokenizer (HF format) to `out_dir` and returns `out_dir`.

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
        "content": text, "lstrip": False, "normalized": False, "rstrip": False,
        "single_word": False, "special": special}
  config = {
      "add_bos_token": False,
      "add_prefix_space": False,
      "added_tokens_decoder": added_decoder,
      "additional_special_tokens": [t for t, s in QWEN_ADDED_TOKENS[1:] if s],
      "bos_token": None,
      "chat_template": chat_template.CHAT_TEMPLATE,
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
