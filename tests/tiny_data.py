"""Shared test data: the tiny tokenizer, short synthetic conversations and the tiny Qwen2.5-VL
config carrying the tokenizer's special-token ids."""

from codevision_jax.data import sizing, synthetic
from codevision_jax.models import presets
from codevision_jax.processing import tokenizer as tok_lib


def short_synthetic(directory: str, n: int, seed: int, settings):
  """(tokenizer, conversations, model config, record sizes): `n` synthetic tasks without the
  system prompt or tool schemas (short sequences), the tokenizer built in `directory`."""
  tok = tok_lib.load_tokenizer(tok_lib.build_tiny_tokenizer(directory))
  convs = synthetic.generate(n, seed=seed)
  for c in convs:
    c.messages = [m for m in c.messages if m["role"] != "system"]
    c.tools = None
  mc = presets.qwen2_5_vl_tiny(512).replace(
    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
    vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
    vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
  )
  return tok, convs, mc, sizing.record_sizes(convs, tok, settings)
