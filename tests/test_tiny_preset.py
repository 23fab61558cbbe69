"""The tiny presets and the tiny tokenizer agree on the special tokens' ids."""

import pytest

from codevision_jax.models import presets
from codevision_jax.processing.tokenizer import build_tiny_tokenizer, load_tokenizer


@pytest.mark.parametrize("name", ["qwen2_5_vl_tiny", "qwen3_vl_tiny"])
def test_tiny_preset_special_ids_are_the_tiny_tokenizers(name, tmp_path):
  tokenizer = load_tokenizer(build_tiny_tokenizer(str(tmp_path)))
  config = presets.preset(name)
  assert len(tokenizer) <= config.text.vocab_size
  for field, token in (
    ("image_token_id", "<|image_pad|>"),
    ("video_token_id", "<|video_pad|>"),
    ("vision_start_token_id", "<|vision_start|>"),
    ("vision_end_token_id", "<|vision_end|>"),
  ):
    assert getattr(config, field) == tokenizer.convert_tokens_to_ids(token), field
