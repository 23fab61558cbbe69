"""Reading SFT / RL records (JSON, JSONL, Parquet), their errors, and the JSONL writer."""

import base64
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from codevision_jax.data import readers, records, sources, synthetic, writers
from codevision_jax.processing import chat
from codevision_jax.processing import tokenizer as tokenizer_lib
from codevision_jax.processing import code_tool

TOOLS_JSON = json.dumps([code_tool.CODE_IMAGE_TOOL["function"]])


def _png(color, size=(12, 8)):
  return records.png_bytes(Image.new("RGB", size, color))


@pytest.fixture
def data_dir(tmp_path):
  os.makedirs(tmp_path / "imgs")
  for name, color in (("a.png", "red"), ("b.png", "blue")):
    Image.new("RGB", (12, 8), color).save(tmp_path / "imgs" / name)
  return tmp_path


def _good_messages_record():
  call = code_tool.format_tool_call(
    code_tool.TOOL_NAME, {"code": "result = image", "description": "d", "image_index": 0}
  )
  return {
    "messages": [
      {"role": "system", "content": "sys"},
      {"role": "user", "content": "<image>What is it?"},
      {"role": "assistant", "content": "<think>look</think>\n" + call},
      {"role": "tool", "content": "Image 1: <image>"},
      {"role": "assistant", "content": "<think>red</think>\n<answer>red</answer>"},
    ],
    "images": ["imgs/a.png", "imgs/b.png"],
    "tools": TOOLS_JSON,
    "ground_truth": "red",
  }


def _good_sharegpt_record():
  return {
    "conversations": [
      {"from": "human", "value": "<image>Which colour?"},
      {
        "from": "function_call",
        "value": json.dumps({"name": code_tool.TOOL_NAME, "arguments": {"code": "result = img", "image_index": 0}}),
      },
      {"from": "observation", "value": "<image>"},
      {"from": "gpt", "value": "<answer>blue</answer>"},
    ],
    "images": ["imgs/b.png", "imgs/a.png"],
  }


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return str(path)


def test_read_jsonl_and_json_forms(data_dir):
  rows = [_good_messages_record(), _good_sharegpt_record()]
  for path in (_write_jsonl(data_dir / "d.jsonl", rows), str(data_dir / "d.json")):
    if path.endswith(".json"):
      with open(path, "w") as f:
        json.dump(rows, f)
    recs = readers.read_sft_records(path)
    assert len(recs) == 2
    first, second = recs
    assert first.images == [str(data_dir / "imgs" / "a.png"), str(data_dir / "imgs" / "b.png")]
    assert first.tools == [code_tool.CODE_IMAGE_TOOL]  # Bare function schemas get wrapped.
    assert first.ground_truth == "red" and first.origin == f"{path}:0"
    roles = [m["role"] for m in first.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert [m["role"] for m in second.messages] == ["user", "assistant", "tool", "assistant"]
    assert second.messages[1] == {
      "role": "assistant",
      "content": "",
      "tool_calls": [{"name": code_tool.TOOL_NAME, "arguments": {"code": "result = img", "image_index": 0}}],
    }
    assert records.load_image(second.images[0]).getpixel((0, 0)) == (0, 0, 255)


def test_read_parquet_with_image_bytes_and_rl_metadata(tmp_path):
  rows = [
    {  # A verl-style RL row.
      "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "<image>Q?"}],
      "images": [{"bytes": _png("green"), "path": None}],
      "data_source": "mvtoolbench",
      "reward_model": {"ground_truth": "42", "style": "rule"},
      "extra_info": {
        "question": "Q?",
        "answer": "42",
        "required_transforms": ["crop", "rotate_90"],
        "gt_bbox": [1, 2, 3, 4],
        "index": 7,
      },
    }
  ]
  path = str(tmp_path / "rl.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  (rec,) = readers.read_rl_records(path)
  assert rec.ground_truth == "42" and rec.answer == "42" and rec.question == "Q?"
  assert rec.required_transforms == ["crop", "rotate_90"]
  assert rec.target_box == [1.0, 2.0, 3.0, 4.0] and rec.data_source == "mvtoolbench"
  assert rec.extra["index"] == 7
  assert records.load_image(rec.images[0]).getpixel((0, 0)) == (0, 128, 0)
  # An SFT read of a prompt-only row is an error: nothing to train on.
  with pytest.raises(readers.RecordError, match="record 0: no assistant turn"):
    readers.read_sft_records(path)


def test_base64_image_bytes_in_json(tmp_path):
  row = _good_sharegpt_record()
  row["images"] = [{"bytes": base64.b64encode(_png("red")).decode()}, _png_path(tmp_path)]
  (rec,) = readers.read_sft_records(_write_jsonl(tmp_path / "d.jsonl", [row]))
  assert records.load_image(rec.images[0]).getpixel((0, 0)) == (255, 0, 0)


def _png_path(tmp_path):
  path = str(tmp_path / "abs.png")
  Image.new("RGB", (4, 4), "white").save(path)
  return path  # Absolute paths are kept as they are.


def _bad_rows():
  missing = _good_messages_record()
  missing["images"][1] = "imgs/nope.png"
  too_many = _good_messages_record()
  too_many["messages"][1]["content"] = "<image><image>What is it?"
  unknown_role = _good_messages_record()
  unknown_role["messages"][2]["role"] = "robot"
  empty = _good_messages_record()
  empty["messages"][4]["content"] = "  "
  return [
    ("missing image file", missing),
    ("3 <image> placeholders but 2 images", too_many),
    ("unknown role 'robot'", unknown_role),
    ("empty assistant turn", empty),
  ]


@pytest.mark.parametrize("reason, row", _bad_rows(), ids=[r for r, _ in _bad_rows()])
def test_bad_record_raises_naming_file_and_index(data_dir, reason, row):
  good = _good_messages_record()
  path = _write_jsonl(data_dir / "bad.jsonl", [good, good, row])
  with pytest.raises(readers.RecordError) as err:
    readers.read_sft_records(path)
  assert err.value.path == path and err.value.index == 2
  assert str(err.value).startswith(f"{path}: record 2: ")
  assert reason in str(err.value)


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_bad_records_skipped_and_counted_with_flag(data_dir, caplog, ext):
  bad = [row for _, row in _bad_rows()]
  rows = [_good_messages_record()] + bad + [_good_sharegpt_record()]
  path = str(data_dir / f"mixed{ext}")
  if ext == ".jsonl":
    _write_jsonl(path, rows)
  elif ext == ".json":
    with open(path, "w") as f:
      json.dump(rows, f)
  else:
    pq.write_table(
      pa.Table.from_pylist(
        [{"messages": json.dumps(r.get("messages")), "images": r["images"], "tools": r["tools"]} for r in rows[:-1]]
      ),
      path,
    )
  stats = {}
  with caplog.at_level(logging.WARNING):
    recs = readers.read_sft_records(path, skip_bad=True, stats=stats)
  kept = 1 if ext == ".parquet" else 2
  assert len(recs) == kept and stats["read"] == kept and stats["skipped"] == 4
  assert sum(stats["skip_reasons"].values()) == 4
  assert f"skipped 4 bad records of {kept + 4}" in caplog.text
  for index in (1, 2, 3, 4):
    assert f"{path}: record {index}:" in caplog.text
  with pytest.raises(readers.RecordError, match="record 1: "):
    readers.read_sft_records(path)


def test_other_record_errors(tmp_path):
  path = _write_jsonl(tmp_path / "x.jsonl", [{"images": []}])
  with pytest.raises(readers.RecordError, match="record 0: no \"messages\""):
    readers.read_sft_records(path)
  with open(tmp_path / "broken.jsonl", "w") as f:
    f.write('{"messages": [}\n')
  with pytest.raises(readers.RecordError, match="record 0: line 1 is not valid JSON"):
    readers.read_sft_records(str(tmp_path / "broken.jsonl"))
  row = {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}], "images": []}
  with pytest.raises(readers.RecordError, match="1 <image> placeholders but 0 images"):
    readers.read_sft_records(_write_jsonl(tmp_path / "y.jsonl", [row]))
  with pytest.raises(ValueError, match="unsupported data file type '.csv'"):
    readers.read_sft_records(str(tmp_path / "z.csv"))


def test_written_synthetic_records_read_back_and_tokenise_identically(tmp_path):
  tok = tokenizer_lib.load_tokenizer(tokenizer_lib.build_tiny_tokenizer(str(tmp_path / "tok")))
  recs = synthetic.generate(6, seed=3)
  path = str(tmp_path / "out" / "sft.jsonl")
  os.makedirs(os.path.dirname(path))
  assert writers.write_sft_jsonl(recs, path) == 6
  back = readers.read_sft_records(path)
  assert len(back) == 6
  for orig, read in zip(recs, back):
    assert len(read.images) == len(orig.images)
    for a, b in zip(orig.images, read.images):
      assert os.path.dirname(b) == str(tmp_path / "out" / "sft_images")
      np.testing.assert_array_equal(np.asarray(records.load_image(a)), np.asarray(records.load_image(b)))
    for key in ("ground_truth", "required_transforms", "question", "answer", "data_source", "tools", "extra"):
      assert getattr(read, key) == getattr(orig, key), key
    assert read.target_box == [float(v) for v in orig.target_box]
    # Structured tool calls in memory and inline text on disk give the same tokens and masks.
    counts = [3] * len(orig.images)
    a = chat.tokenize_conversation(tok, orig.messages, counts, tools=orig.tools)
    b = chat.tokenize_conversation(tok, read.messages, counts, tools=read.tools)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.loss_mask, b.loss_mask)


def test_conversation_source_is_a_grain_source(data_dir):
  import grain  # pylint: disable=import-outside-toplevel

  path = _write_jsonl(data_dir / "d.jsonl", [_good_messages_record(), _good_sharegpt_record(), _bad_rows()[0][1]])
  stats = {}
  source = sources.ConversationSource.from_files([path], skip_bad=True, stats=stats)
  assert len(source) == 2 and stats[path]["skipped"] == 1
  dataset = grain.MapDataset.source(source).map(lambda c: c.origin)
  assert [dataset[i] for i in range(2)] == [f"{path}:0", f"{path}:1"]
