"""Readable record errors: LLaMA-Factory's content-part records (its newer `{"type": ..., "value":
...}` parts, as in reason_tool_use_demo_50.jsonl) are read; an unsupported part is refused naming
the formats we read; a corrupt image names the file or the record, never a Python object."""

import io
import json

import pytest
from PIL import Image

from codevision_jax.data import readers, records
from codevision_jax.processing import chat

# The shape of a record of LLaMA-Factory's data/reason_tool_use_demo_50.jsonl (our own words).
TOOLS = [
  {
    "type": "function",
    "function": {
      "name": "get_movie_details",
      "description": "Details.",
      "parameters": {"type": "object", "properties": {"title": {"type": "string"}}},
    },
  }
]
VALUE_RECORD = {
  "messages": [
    {"role": "system", "content": [{"type": "text", "value": "Use the tools."}]},
    {"role": "user", "content": [{"type": "text", "value": "Tell me about Inception."}]},
    {
      "role": "assistant",
      "content": [
        {"type": "reasoning", "value": "I should look it up."},
        {"type": "tool_call", "value": json.dumps({"name": "get_movie_details", "arguments": {"title": "Inception"}})},
      ],
    },
    {"role": "tool", "content": [{"type": "text", "value": "[{\"year\": 2010}]"}]},
    {
      "role": "assistant",
      "content": [
        {"type": "reasoning", "value": "It is from 2010."},
        {"type": "text", "value": "Inception is from 2010."},
      ],
    },
  ],
  "tools": json.dumps(TOOLS),
}


def _write(tmp_path, rows, name="data.jsonl"):
  path = tmp_path / name
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_value_content_parts_are_read(tmp_path):
  (conv,) = readers.read_sft_records(_write(tmp_path, [VALUE_RECORD]))
  m = conv.messages
  assert m[0] == {"role": "system", "content": "Use the tools."}
  assert m[2] == {
    "role": "assistant",
    "content": "<think>\nI should look it up.\n</think>\n",
    "tool_calls": [{"name": "get_movie_details", "arguments": {"title": "Inception"}}],
  }
  assert m[3] == {"role": "tool", "content": "[{\"year\": 2010}]"}
  assert m[4]["content"] == "<think>\nIt is from 2010.\n</think>\n\nInception is from 2010."
  assert conv.tools == TOOLS
  text = chat.render(conv.messages, tools=conv.tools, chat_format="qwen3_vl").text
  assert (
    "<|im_start|>assistant\n<think>\nI should look it up.\n</think>\n\n<tool_call>\n"
    '{"name": "get_movie_details", "arguments": {"title": "Inception"}}\n</tool_call>'
    "<|im_end|>"
  ) in text


def test_image_parts_and_openai_text_parts(tmp_path):
  buf = io.BytesIO()
  Image.new("RGB", (8, 8)).save(buf, format="PNG")
  (tmp_path / "a.png").write_bytes(buf.getvalue())
  row = {
    "messages": [
      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
      {"role": "assistant", "content": [{"type": "text", "value": "<answer>A</answer>"}]},
    ],
    "images": ["a.png"],
  }
  (conv,) = readers.read_sft_records(_write(tmp_path, [row]))
  assert conv.messages[0]["content"] == "<image>What?"


@pytest.mark.parametrize(
  "part, role, where",
  [
    ({"type": "audio", "value": "x.wav"}, "user", "message 1: unsupported content part 0"),
    ({"type": "reasoning", "value": "hmm"}, "user", "in a user turn"),
    ({"type": "text", "value": 5}, "assistant", "unsupported content part 0"),
  ],
)
def test_unsupported_part_names_the_supported_formats(tmp_path, part, role, where):
  messages = [{"role": "system", "content": "S"}, {"role": role, "content": [part]}]
  if role != "assistant":
    messages.append({"role": "assistant", "content": "ok"})
  path = _write(tmp_path, [{"messages": messages}])
  with pytest.raises(readers.RecordError) as e:
    readers.read_sft_records(path)
  text = str(e.value)
  assert text.startswith(f"{path}: record 0: ") and where in text
  for supported in (
    '"type": "text", "text" or "value"',
    '"type": "image_url"',
    '"type": "reasoning"',
    '"type": "tool_call"',
    "reason_tool_use_demo_50.jsonl",
  ):
    assert supported in text


def test_text_after_a_tool_call_is_refused(tmp_path):
  row = {
    "messages": [
      {"role": "user", "content": "q"},
      {
        "role": "assistant",
        "content": [{"type": "tool_call", "value": {"name": "f", "arguments": {}}}, {"type": "text", "value": "late"}],
      },
    ]
  }
  with pytest.raises(readers.RecordError, match="part 1 \\(text\\) follows a tool_call part"):
    readers.read_sft_records(_write(tmp_path, [row]))


def test_corrupt_image_names_the_file_or_the_record(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError) as e:
    records.load_image(str(bad), origin="data.jsonl:3")
  assert str(e.value).startswith(f"data.jsonl:3: image {str(bad)!r} cannot be decoded")
  assert "data.skip_bad=True" in str(e.value)
  with pytest.raises(ValueError) as e:
    records.load_image(b"GIF89a broken", origin="data.parquet:0")
  message = str(e.value)
  assert message.startswith("data.parquet:0: image 13 bytes of image data starting b'GIF89a b'")
  assert "BytesIO" not in message and " at 0x" not in message
