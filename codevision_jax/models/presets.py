"""Named model sizes: the published Qwen-VL architectures and the tiny ones tests and the demo use.

`preset("qwen2_5_vl_7b")` gives the `VLConfig` of the real model (shapes only: weights come from
a checkpoint via `load_hf`); a recipe names one as `config.model.preset` for a random model of
that size. `SIZES` records the published checkpoints of each and their exact parameter counts,
which tests/test_presets.py checks against a full-size abstract build:

    from codevision_jax.models import abstract_model, build_model
    model = abstract_model(preset("qwen3_vl_8b"))      # shapes only; build_model(...): random weights
    model = cvj.load_hf("/ckpt/Qwen3-VL-8B-Instruct")  # weights; the architecture from config.json

| name | checkpoints (HF) | parameters | published |
| --- | --- | --- | --- |
| qwen2_5_vl_3b | Qwen/Qwen2.5-VL-3B-Instruct | 3,754,622,976 | 3.75B |
| qwen2_5_vl_7b | Qwen/Qwen2.5-VL-7B-Instruct | 8,292,166,656 | 8.29B |
| qwen2_5_vl_32b | Qwen/Qwen2.5-VL-32B-Instruct | 33,448,292,352 | 33.5B |
| qwen2_5_vl_72b | Qwen/Qwen2.5-VL-72B-Instruct | 73,406,351,360 | 73.4B |
| qwen3_vl_2b | Qwen/Qwen3-VL-2B-{Instruct,Thinking} | 2,127,532,032 | 2.13B |
| qwen3_vl_4b | Qwen/Qwen3-VL-4B-{Instruct,Thinking} | 4,437,815,808 | 4.44B |
| qwen3_vl_8b | Qwen/Qwen3-VL-8B-{Instruct,Thinking} | 8,767,123,696 | 8.77B |
| qwen3_vl_32b | Qwen/Qwen3-VL-32B-{Instruct,Thinking} | 33,357,390,064 | 33.4B |

`qwen2_5_vl_tiny` and `qwen3_vl_tiny` keep the real architectures at toy widths (tests, CPU demos).
"""

from __future__ import annotations

import dataclasses

from codevision_jax.models.config import TextConfig, VisionConfig, VLConfig

# The special tokens' ids in the tiny tokenizer (`processing.tokenizer.build_tiny_tokenizer`: 384
# byte-level BPE tokens, then Qwen's added tokens in their release order).
TINY_TOKENIZER_IDS = dict(image_token_id=396, video_token_id=397, vision_start_token_id=393, vision_end_token_id=394)

_QWEN2_5_VISION = dict(
  depth=32,
  hidden_size=1280,
  intermediate_size=3420,
  num_heads=16,
  patch_size=14,
  spatial_merge_size=2,
  temporal_patch_size=2,
  window_size=112,
  fullatt_block_indexes=(7, 15, 23, 31),
  hidden_act="silu",
  tokens_per_second=2,
)
_QWEN2_5_TEXT = dict(
  rms_norm_eps=1e-6, rope_theta=1000000.0, mrope_section=(16, 24, 24), max_position_embeddings=128000
)


def _qwen2_5(hidden, intermediate, layers, heads, kv_heads, vocab, tie) -> VLConfig:
  return VLConfig(
    model_type="qwen2_5_vl",
    vision=VisionConfig(out_hidden_size=hidden, **_QWEN2_5_VISION),
    text=TextConfig(
      vocab_size=vocab,
      hidden_size=hidden,
      intermediate_size=intermediate,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      **_QWEN2_5_TEXT,
    ),
    tie_word_embeddings=tie,
  )


def qwen2_5_vl_tiny(vocab_size: int = 512) -> VLConfig:
  """The embedded default: the Qwen2.5-VL architecture at toy size (runs on a laptop CPU).

  Special token ids are those of `processing.tokenizer.build_tiny_tokenizer`.
  """
  return VLConfig(
    model_type="qwen2_5_vl",
    vision=VisionConfig(
      depth=4,
      hidden_size=64,
      intermediate_size=128,
      num_heads=4,
      patch_size=14,
      spatial_merge_size=2,
      temporal_patch_size=2,
      window_size=56,
      fullatt_block_indexes=(1, 3),
      out_hidden_size=128,
      hidden_act="silu",
    ),
    text=TextConfig(
      vocab_size=vocab_size,
      hidden_size=128,
      intermediate_size=256,
      num_hidden_layers=4,
      num_attention_heads=4,
      num_key_value_heads=2,
      rms_norm_eps=1e-6,
      rope_theta=10000.0,
      mrope_section=(4, 6, 6),
      max_position_embeddings=32768,
    ),
    **TINY_TOKENIZER_IDS,
    tie_word_embeddings=False,
  )


# Qwen3-VL (dense), from the released config.json files. Published totals (HF model cards):
# 2B 2.13B, 4B 4.44B, 8B 8.77B, 32B 33.4B; tests/test_presets.py pins the exact counts.
_QWEN3_SMALL_VISION = dict(
  depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=(5, 11, 17)
)  # 2B, 4B
_QWEN3_LARGE_VISION = dict(
  depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=(8, 16, 24)
)  # 8B, 32B
_QWEN3_VISION = dict(
  num_heads=16,
  patch_size=16,
  spatial_merge_size=2,
  temporal_patch_size=2,
  hidden_act="gelu_pytorch_tanh",
  num_position_embeddings=2304,
  window_size=0,
  fullatt_block_indexes=(),
)
_QWEN3_TEXT = dict(
  head_dim=128,
  rms_norm_eps=1e-6,
  rope_theta=5000000.0,
  mrope_section=(24, 20, 20),
  mrope_interleaved=True,
  attention_bias=False,
  qk_norm=True,
  max_position_embeddings=262144,
)


def _qwen3(hidden, intermediate, layers, heads, kv_heads, tie, vision) -> VLConfig:
  return VLConfig(
    model_type="qwen3_vl",
    vision=VisionConfig(out_hidden_size=hidden, **vision, **_QWEN3_VISION),
    text=TextConfig(
      vocab_size=151936,
      hidden_size=hidden,
      intermediate_size=intermediate,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      **_QWEN3_TEXT,
    ),
    tie_word_embeddings=tie,
  )


def qwen3_vl_tiny(vocab_size: int = 512) -> VLConfig:
  """The Qwen3-VL architecture at toy size: DeepStack at two blocks, explicit head_dim, tied."""
  return VLConfig(
    model_type="qwen3_vl",
    vision=VisionConfig(
      depth=4,
      hidden_size=64,
      intermediate_size=128,
      num_heads=4,
      patch_size=16,
      spatial_merge_size=2,
      temporal_patch_size=2,
      out_hidden_size=128,
      hidden_act="gelu_pytorch_tanh",
      num_position_embeddings=64,
      deepstack_visual_indexes=(1, 2),
      window_size=0,
      fullatt_block_indexes=(),
    ),
    text=TextConfig(
      vocab_size=vocab_size,
      hidden_size=128,
      intermediate_size=256,
      num_hidden_layers=4,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=32,
      rms_norm_eps=1e-6,
      rope_theta=10000.0,
      mrope_section=(6, 5, 5),
      mrope_interleaved=True,
      attention_bias=False,
      qk_norm=True,
      max_position_embeddings=32768,
    ),
    **TINY_TOKENIZER_IDS,
    tie_word_embeddings=True,
  )


PRESETS = {
  "qwen2_5_vl_tiny": qwen2_5_vl_tiny,
  "qwen2_5_vl_3b": lambda: _qwen2_5(2048, 11008, 36, 16, 2, 151936, True),
  "qwen2_5_vl_7b": lambda: _qwen2_5(3584, 18944, 28, 28, 4, 152064, False),
  "qwen2_5_vl_32b": lambda: _qwen2_5(5120, 27648, 64, 40, 8, 152064, False),
  "qwen2_5_vl_72b": lambda: _qwen2_5(8192, 29568, 80, 64, 8, 152064, False),
  "qwen3_vl_tiny": qwen3_vl_tiny,
  "qwen3_vl_2b": lambda: _qwen3(2048, 6144, 28, 16, 8, True, _QWEN3_SMALL_VISION),
  "qwen3_vl_4b": lambda: _qwen3(2560, 9728, 36, 32, 8, True, _QWEN3_SMALL_VISION),
  "qwen3_vl_8b": lambda: _qwen3(4096, 12288, 36, 32, 8, False, _QWEN3_LARGE_VISION),
  "qwen3_vl_32b": lambda: _qwen3(5120, 25600, 64, 64, 8, False, _QWEN3_LARGE_VISION),
}


def preset(name: str) -> VLConfig:
  try:
    return PRESETS[name]()
  except KeyError:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


@dataclasses.dataclass(frozen=True)
class ModelSize:
  checkpoints: tuple[str, ...]
  parameters: int  # exact, embeddings included (tied embeddings counted once)
  published: str  # as the model card rounds it


def _qwen3_checkpoints(size: str) -> tuple[str, ...]:
  return (f"Qwen/Qwen3-VL-{size}-Instruct", f"Qwen/Qwen3-VL-{size}-Thinking")


SIZES = {
  "qwen2_5_vl_3b": ModelSize(("Qwen/Qwen2.5-VL-3B-Instruct",), 3_754_622_976, "3.75B"),
  "qwen2_5_vl_7b": ModelSize(("Qwen/Qwen2.5-VL-7B-Instruct",), 8_292_166_656, "8.29B"),
  "qwen2_5_vl_32b": ModelSize(("Qwen/Qwen2.5-VL-32B-Instruct",), 33_448_292_352, "33.5B"),
  "qwen2_5_vl_72b": ModelSize(("Qwen/Qwen2.5-VL-72B-Instruct",), 73_406_351_360, "73.4B"),
  "qwen3_vl_2b": ModelSize(_qwen3_checkpoints("2B"), 2_127_532_032, "2.13B"),
  "qwen3_vl_4b": ModelSize(_qwen3_checkpoints("4B"), 4_437_815_808, "4.44B"),
  "qwen3_vl_8b": ModelSize(_qwen3_checkpoints("8B"), 8_767_123_696, "8.77B"),
  "qwen3_vl_32b": ModelSize(_qwen3_checkpoints("32B"), 33_357_390_064, "33.4B"),
}
"""The published checkpoints and exact parameter count of every real-size preset."""
