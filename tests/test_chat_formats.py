"""The chat format of each model family (qwen2_vl, qwen3_vl, qwen3_vl_nothink): our rendering
against each format's Jinja template, the facts docs/chat_format.md states, how a tokenizer's
format is chosen and announced, and the template an export carries."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import transformers

from codevision_jax.hf import save as hf_save
from codevision_jax.processing import chat, chat_template, code_tool
from codevision_jax.processing import tokenizer as tokenizer_lib
from test_chat_format import CONVERSATION, COUNTS

FORMATS = sorted(chat.FORMATS)

# Assistant turns without a thought, a tool call without text, two tool messages in a row, a
# second user query, and one turn already in the Thinking form.
EDGE = [
  {"role": "user", "content": "Look: <image>"},
  {
    "role": "assistant",
    "content": "",
    "tool_calls": [
      {"name": code_tool.TOOL_NAME, "arguments": {"code": "result = img"}},
      {"name": code_tool.TOOL_NAME, "arguments": '{"code": "x", "image_index": 1}'},
    ],
  },
  {"role": "tool", "content": "Error: division by zero"},
  {"role": "tool", "content": "Image 1: <image>"},
  {"role": "assistant", "content": "It is B."},
  {"role": "user", "content": "And now?"},
  {"role": "assistant", "content": "<think>\nsure\n</think>\n\n<answer>B</answer>"},
]
EDGE_COUNTS = (3, 2)


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
  root = tmp_path_factory.mktemp("toks")
  return {
    f: tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(root / f), chat_format=f)) for f in FORMATS
  }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tools", [None, [code_tool.CODE_IMAGE_TOOL]])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_equals_the_formats_template(toks, fmt, tools, generation_prompt):
  tok = toks[fmt]
  assert chat.format_of(tok) == fmt
  for conv, counts in ((CONVERSATION, COUNTS), (CONVERSATION[1:], COUNTS), (EDGE, EDGE_COUNTS)):
    ours = chat.render(conv, tools=tools, add_generation_prompt=generation_prompt, chat_format=fmt)
    theirs = tok.apply_chat_template(
      chat.to_hf_messages(conv), tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert ours.text == theirs
    ids = chat.tokenize_conversation(tok, conv, counts, tools=tools, add_generation_prompt=generation_prompt)
    np.testing.assert_array_equal(
      ids.input_ids, chat.chat_template_ids(tok, conv, counts, tools=tools, add_generation_prompt=generation_prompt)
    )


def test_system_lines_per_format():
  user = [{"role": "user", "content": "hi"}]
  assert chat.render(user, chat_format="qwen2_vl").text.startswith(
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi"
  )
  for fmt in ("qwen3_vl", "qwen3_vl_nothink"):
    assert chat.render(user, chat_format=fmt).text == "<|im_start|>user\nhi<|im_end|>\n"
    with_tools = chat.render(user, tools=[code_tool.CODE_IMAGE_TOOL], chat_format=fmt).text
    assert with_tools.startswith("<|im_start|>system\n# Tools\n\nYou may call")
    with_system = chat.render(
      [{"role": "system", "content": "S"}] + user, tools=[code_tool.CODE_IMAGE_TOOL], chat_format=fmt
    ).text
    assert with_system.startswith("<|im_start|>system\nS\n\n# Tools\n\n")
  # An explicit default system line still overrides the format's.
  assert chat.render(user, default_system="D", chat_format="qwen3_vl").text.startswith(
    "<|im_start|>system\nD<|im_end|>\n"
  )


def test_thinking_format_trains_the_empty_thought_and_keeps_given_thoughts(toks):
  tok = toks["qwen3_vl"]
  r = chat.render(EDGE, chat_format="qwen3_vl")
  trained = [r.text[s:e] for s, e in r.loss_spans]
  assert trained[0].startswith("<think>\n\n</think>\n\n<tool_call>\n")
  assert trained[1] == "<think>\n\n</think>\n\nIt is B.<|im_end|>"
  assert trained[2] == EDGE[-1]["content"] + "<|im_end|>"  # A given thought: verbatim, no extra.
  nothink = chat.render(EDGE, chat_format="qwen3_vl_nothink")
  assert "<think>\n\n</think>" not in nothink.text
  assert [nothink.text[s:e] for s, e in nothink.loss_spans][1] == "It is B.<|im_end|>"
  # The CodeVision trajectories start every turn with <think>: the two Qwen3 formats agree.
  assert (
    chat.render(CONVERSATION, chat_format="qwen3_vl").text
    == chat.render(CONVERSATION, chat_format="qwen3_vl_nothink").text
  )
  out = chat.tokenize_conversation(tok, EDGE, EDGE_COUNTS)
  thought = tok("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
  first = int(np.flatnonzero(out.loss_mask)[0])
  assert out.input_ids[first : first + len(thought)].tolist() == thought


def test_agent_pieces_concatenate_in_every_format(toks):
  """The agent loop's prompt + generated turns + tool turns equal the whole conversation."""
  for fmt in FORMATS:
    tok = toks[fmt]
    tools = [code_tool.CODE_IMAGE_TOOL]
    full = chat.tokenize_conversation(tok, CONVERSATION, COUNTS, tools=tools)
    prompt = chat.tokenize_conversation(tok, CONVERSATION[:2], COUNTS[:2], tools=tools, add_generation_prompt=True)
    r = chat.render(CONVERSATION, tools=tools, chat_format=fmt)
    turn1, turn2 = (tok(r.text[s:e], add_special_tokens=False)["input_ids"] for s, e in r.loss_spans)
    tool_ids, _ = chat.tokenize_text(
      tok, chat.render_tool_turn([CONVERSATION[3]["content"]]), image_token_counts=COUNTS[2:]
    )
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert prompt.input_ids.tolist() + turn1 + tool_ids.tolist() + turn2 + newline == full.input_ids.tolist(), fmt


def test_format_is_chosen_named_and_logged(toks, tmp_path, caplog):
  base = tokenizer_lib.build_tiny_tokenizer(str(tmp_path / "t"))
  with caplog.at_level(logging.INFO, logger="codevision_jax.processing.tokenizer"):
    tok = tokenizer_lib.load_tokenizer(base, chat_format="qwen3_vl")
  assert chat.format_of(tok) == "qwen3_vl"
  assert "chat format qwen3_vl (from model.chat_format)" in caplog.text
  # Our qwen2_vl template renders the test conversation unlike qwen3_vl: said at start.
  warning = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warning) == 1 and "renders a test conversation differently" in warning[0].getMessage()
  assert "'qwen3_vl'" in warning[0].getMessage() and base in warning[0].getMessage()
  # From the model family: config.json beside the tokenizer, or model_type given.
  with open(os.path.join(base, "config.json"), "w") as f:
    json.dump({"model_type": "qwen3_vl"}, f)
  assert tokenizer_lib.resolve_chat_format(toks["qwen3_vl"], path=base) == ("qwen3_vl", "model_type qwen3_vl")
  assert (
    tokenizer_lib.resolve_chat_format(toks["qwen3_vl_nothink"], model_type="qwen3_vl")[0] == "qwen3_vl_nothink"
  )  # Qwen3-VL Instruct: its template has no <think>.
  assert tokenizer_lib.resolve_chat_format(toks["qwen3_vl"], model_type="qwen2_5_vl")[0] == "qwen2_vl"
  assert tokenizer_lib.resolve_chat_format(toks["qwen3_vl"])[0] == "qwen3_vl"  # Its template.
  assert tokenizer_lib.template_mismatch(toks["qwen3_vl"], "qwen3_vl") is None
  with pytest.raises(ValueError, match=r"unknown chat format 'qwen9'.*model.chat_format"):
    tokenizer_lib.load_tokenizer(base, chat_format="qwen9")


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_template_renders_what_was_trained(tmp_path, fmt):
  """write_hf's chat template wins over the source's (tokenizer_config.json, a stale
  chat_template.json): transformers renders the trained format, images included."""
  src = tokenizer_lib.build_tiny_tokenizer(str(tmp_path / "src"))  # Carries qwen2_vl's template.
  with open(os.path.join(src, "chat_template.json"), "w") as f:
    json.dump({"chat_template": "{{ 'stale' }}"}, f)
  out = str(tmp_path / "out")
  shutil.copytree(src, out)
  hf_save.write_chat_template(out, chat_template.template_for(fmt))
  assert not os.path.exists(os.path.join(out, "chat_template.json"))
  with open(os.path.join(src, "tokenizer_config.json")) as f:  # The source is left as it was.
    assert json.load(f)["chat_template"] == chat_template.CHAT_TEMPLATE
  tok = transformers.AutoTokenizer.from_pretrained(out)
  for tools in (None, [code_tool.CODE_IMAGE_TOOL]):
    text = tok.apply_chat_template(chat.to_hf_messages(CONVERSATION), tools=tools, tokenize=False)
    assert text == chat.render(CONVERSATION, tools=tools, chat_format=fmt).text
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == len(COUNTS)
