"""Chat rendering, loss masks and tool-call parsing against a tiny Qwen-like tokenizer."""

import json

import numpy as np
import pytest

from codevision_jax.processing import chat
from codevision_jax.processing import tokenizer as tokenizer_lib
from codevision_jax.processing import code_tool

CALL_ARGS = {
  "code": "from PIL import Image\nresult = image.rotate(180).crop((4, 8, 60, 40))",
  "description": "Turn the sign upright and crop it — «détail».",
  "image_index": 0,
}

# System, user with two images, assistant with a tool call, tool result with an image, answer.
CONVERSATION = [
  {"role": "system", "content": code_tool.SYSTEM_PROMPT},
  {"role": "user", "content": "<image>\nWhat is written on the sign? The second photo <image> is a closer view."},
  {
    "role": "assistant",
    "content": "<think>The sign is upside down.</think>",
    "tool_calls": [{"name": code_tool.TOOL_NAME, "arguments": CALL_ARGS}],
  },
  {"role": "tool", "content": code_tool.tool_response_content(2)},
  {"role": "assistant", "content": "<think>Now it reads STOP.</think>\n<answer>STOP</answer>"},
]
COUNTS = (6, 4, 9)

# The exact text of the two assistant turns that must carry loss, `<|im_end|>` included.
ASSISTANT_1 = (
  "<think>The sign is upside down.</think>\n<tool_call>\n"
  '{"name": "code_image_tool", "arguments": ' + json.dumps(CALL_ARGS, ensure_ascii=False) + "}\n</tool_call><|im_end|>"
)
ASSISTANT_2 = "<think>Now it reads STOP.</think>\n<answer>STOP</answer><|im_end|>"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def _runs(mask):
  """Contiguous [start, end) runs of ones."""
  padded = np.concatenate([[0], mask, [0]])
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[::2], edges[1::2]))


def test_tiny_tokenizer_has_qwen_special_tokens(tok):
  assert len(tok) < 1000
  for text, special in tokenizer_lib.QWEN_ADDED_TOKENS:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, text
    assert tok.convert_ids_to_tokens(ids[0]) == text
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  text = "<|im_start|>user\nHéllo wörld 123<|im_end|>\n"
  assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_masks_exact_on_multiturn_conversation_with_two_images_and_tool_call(tok):
  out = chat.tokenize_conversation(tok, CONVERSATION, COUNTS, tools=[code_tool.CODE_IMAGE_TOOL])
  ids, mask = out.input_ids, out.loss_mask
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape
  assert set(np.unique(mask)) == {0, 1}
  runs = _runs(mask)
  assert len(runs) == 2
  expected = [
    tok(ASSISTANT_1, add_special_tokens=False)["input_ids"],
    tok(ASSISTANT_2, add_special_tokens=False)["input_ids"],
  ]
  header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
  newline = tok("\n", add_special_tokens=False)["input_ids"]
  for (start, end), want in zip(runs, expected):
    assert ids[start:end].tolist() == want
    assert ids[start - len(header) : start].tolist() == header  # Header not trained.
    assert ids[end : end + 1].tolist() == newline  # Newline after <|im_end|> not trained.
  # Everything else, system / tools / user / images / tool response, is masked out.
  assert int(mask.sum()) == len(expected[0]) + len(expected[1])
  # Images: one block of pads per image, sizes in order, never trained.
  pad = tok.convert_tokens_to_ids(chat.IMAGE_PAD)
  pad_runs = _runs((ids == pad).astype(np.int32))
  assert [e - s for s, e in pad_runs] == list(COUNTS)
  vstart, vend = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
  for s, e in pad_runs:
    assert ids[s - 1] == vstart and ids[e] == vend
    assert not mask[s:e].any()
  # The tool response sits in a user turn.
  text = tok.decode(ids[mask == 0])
  assert "<|im_start|>user\n<tool_response>\nImage 2: <|vision_start|>" in text
  assert "</tool_response><|im_end|>\n" in text


@pytest.mark.parametrize("use_tools", [False, True])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_ids_equal_apply_chat_template(tok, use_tools, generation_prompt):
  tool_list = [code_tool.CODE_IMAGE_TOOL] if use_tools else None
  ours = chat.tokenize_conversation(tok, CONVERSATION, COUNTS, tools=tool_list, add_generation_prompt=generation_prompt)
  theirs = chat.chat_template_ids(tok, CONVERSATION, COUNTS, tools=tool_list, add_generation_prompt=generation_prompt)
  np.testing.assert_array_equal(ours.input_ids, theirs)
  text = tok.apply_chat_template(
    chat.to_hf_messages(CONVERSATION), tools=tool_list, tokenize=False, add_generation_prompt=generation_prompt
  )
  assert chat.render(CONVERSATION, tools=tool_list, add_generation_prompt=generation_prompt).text == text


def test_ids_equal_apply_chat_template_edge_cases(tok):
  # No system message (default one), a call without text, two calls, consecutive tool messages,
  # arguments given as a JSON string, a tool message first after the user turn, leading spaces.
  messages = [
    {"role": "user", "content": "Look: <image>"},
    {
      "role": "assistant",
      "content": "",
      "tool_calls": [
        {"function": {"name": code_tool.TOOL_NAME, "arguments": CALL_ARGS}},
        {"name": code_tool.TOOL_NAME, "arguments": '{"code": "result = img", "image_index": 1}'},
      ],
    },
    {"role": "tool", "content": "Error: division by zero"},
    {"role": "tool", "content": "Image 1: <image>"},
    {"role": "assistant", "content": "  \n<think>ok</think>"},
    {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": "<answer>B</answer>"},
  ]
  for tool_list in (None, [code_tool.CODE_IMAGE_TOOL]):
    ours = chat.tokenize_conversation(tok, messages, (3, 2), tools=tool_list)
    np.testing.assert_array_equal(ours.input_ids, chat.chat_template_ids(tok, messages, (3, 2), tools=tool_list))
    assert len(_runs(ours.loss_mask)) == 3
  assert chat.render(messages).text.startswith(
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nLook: "
  )


def test_prompt_and_tool_turn_pieces_concatenate_to_full_conversation(tok):
  """What the agent loop builds turn by turn equals the tokenised full conversation."""
  tool_list = [code_tool.CODE_IMAGE_TOOL]
  full = chat.tokenize_conversation(tok, CONVERSATION, COUNTS, tools=tool_list)
  prompt = chat.tokenize_conversation(tok, CONVERSATION[:2], COUNTS[:2], tools=tool_list, add_generation_prompt=True)
  turn1 = tok(ASSISTANT_1, add_special_tokens=False)["input_ids"]
  tool_ids, tool_mask = chat.tokenize_text(
    tok, chat.render_tool_turn([CONVERSATION[3]["content"]]), image_token_counts=COUNTS[2:]
  )
  assert not tool_mask.any()
  turn2 = tok(ASSISTANT_2, add_special_tokens=False)["input_ids"]
  newline = tok("\n", add_special_tokens=False)["input_ids"]
  built = prompt.input_ids.tolist() + turn1 + tool_ids.tolist() + turn2 + newline
  assert built == full.input_ids.tolist()


def test_formatting_errors(tok):
  with pytest.raises(ValueError, match="3 <image> placeholders but 2"):
    chat.tokenize_conversation(tok, CONVERSATION, (1, 2))
  with pytest.raises(ValueError, match="unknown role 'robot'"):
    chat.render([{"role": "robot", "content": "hi"}])
  with pytest.raises(ValueError, match="assistant turn cannot contain"):
    chat.render([{"role": "assistant", "content": "<image>"}])
  with pytest.raises(ValueError, match="image token counts must be >= 1"):
    chat.tokenize_conversation(tok, [{"role": "user", "content": "<image>"}], (0,))


def test_parse_tool_call_valid():
  text = "<think>flip it</think>\n" + code_tool.format_tool_call(code_tool.TOOL_NAME, CALL_ARGS)
  call = code_tool.parse_tool_call(text, num_images=1)
  assert call == code_tool.ToolCall(code_tool.TOOL_NAME, CALL_ARGS["code"], CALL_ARGS["description"], 0)
  assert call.arguments == CALL_ARGS
  # Arguments serialised as a string, and a bare JSON object without tags, are accepted.
  raw = json.dumps({"name": code_tool.TOOL_NAME, "arguments": json.dumps({"code": "result = img", "image_index": 3})})
  call = code_tool.parse_tool_call(raw)
  assert isinstance(call, code_tool.ToolCall) and call.image_index == 3 and call.description == ""
  # The last of several calls is the one parsed.
  two = code_tool.format_tool_call(code_tool.TOOL_NAME, CALL_ARGS) + code_tool.format_tool_call(
    code_tool.TOOL_NAME, dict(CALL_ARGS, image_index=1)
  )
  assert code_tool.parse_tool_call(two).image_index == 1


@pytest.mark.parametrize(
  "text, message",
  [
    ('<tool_call>\n{"name": "code_image_tool", "arguments": {"code": "x"\n</tool_call>', "not valid JSON"),
    ("<tool_call>\n[1, 2]\n</tool_call>", "must be a JSON object"),
    ('<tool_call>\n{"name": "zoom", "arguments": {}}\n</tool_call>', "unknown tool 'zoom'"),
    ('<tool_call>\n{"name": "code_image_tool", "arguments": 5}\n</tool_call>', '"arguments" must'),
    (
      '<tool_call>{"name": "code_image_tool", "arguments": {"code": 1, "image_index": 0}}</tool_call>',
      '"code" must be a non-empty string',
    ),
    (
      '<tool_call>{"name": "code_image_tool", "arguments": {"code": "'
      + "x" * 2049
      + '", "image_index": 0}}</tool_call>',
      "2049 characters; the limit is 2048",
    ),
    (
      '<tool_call>{"name": "code_image_tool", "arguments": {"code": "a", "image_index": -1}}</tool_call>',
      '"image_index" must be an integer >= 0, got -1',
    ),
    ('<tool_call>{"name": "code_image_tool", "arguments": {"code": "a", "image_index": "0"}}</tool_call>', "got '0'"),
    ('<tool_call>{"name": "code_image_tool", "arguments": {"code": "a", "image_index": true}}</tool_call>', "got True"),
    ('<tool_call>{"name": "code_image_tool", "arguments": {"code": "a", "image_index": 1.5}}</tool_call>', "got 1.5"),
    (
      '<tool_call>{"name": "code_image_tool", "arguments": {"code": "a", "image_index": 2}}</tool_call>',
      "only 2 images",
    ),
    (
      '<tool_call>{"name": "code_image_tool", "arguments": {"code": "a", "description": 3, '
      '"image_index": 0}}</tool_call>',
      '"description" must be a string',
    ),
    ('<tool_call>{"name": "code_image_tool", "arguments": {"code": "a"', "not closed"),
  ],
)
def test_parse_tool_call_errors(text, message):
  result = code_tool.parse_tool_call(text, num_images=2)
  assert isinstance(result, code_tool.ParseError)
  assert message in result.message
