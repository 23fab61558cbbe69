"""Benchmark readers (`evals.suites`): each suite's published format, its bad rows, and limits."""

import base64
import csv
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from codevision_jax.data import records
from evals import suites

GARBAGE = b"this is not an image, just bytes"
INSTR = "Answer with the option's letter from the given choices directly."


def _png(color, size=(10, 6)):
  return records.png_bytes(Image.new("RGB", size, color))


def _jpeg(color, size=(10, 6)):
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def _pixel(image):
  return records.load_image(image).getpixel((2, 2))


def _near(pixel, color, tol=8):
  return all(abs(a - b) <= tol for a, b in zip(pixel, color))


def _tsv(path, header, rows):
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter="\t")  # As pandas' to_csv(sep="\t") writes it.
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _b64(data):
  return base64.b64encode(data).decode()


def _bad(bad):
  """{row: reason} of the bad items, after checking they name the suite's file."""
  return {b.row: b.reason for b in bad}


def test_suite_names_and_unknown_suite(tmp_path):
  assert set(suites.SUITES) == {"ocrbench", "chartqapro", "mvtoolbench", "vstar", "hrbench4k", "hrbench8k"}
  with pytest.raises(ValueError, match=r"unknown suite 'ocrbench2'.*ocrbench, chartqapro"):
    suites.read_suite("ocrbench2", str(tmp_path))


def test_missing_and_wrong_files_name_the_path_and_the_expected_file(tmp_path):
  missing = str(tmp_path / "nope" / "hr_bench_4k.tsv")
  with pytest.raises(FileNotFoundError, match=r"nope/hr_bench_4k\.tsv: no such file.*hrbench4k"):
    suites.read_suite("hrbench4k", missing)
  csv_file = _write(tmp_path / "hr_bench_4k.csv", b"index,question\n")
  with pytest.raises(
    ValueError,
    match=r"hr_bench_4k\.csv: hrbench4k reads hr_bench_4k\.tsv.*"
    r"not a \.csv file",
  ):
    suites.read_suite("hrbench4k", csv_file)
  with pytest.raises(FileNotFoundError, match=r"no test_questions\.jsonl or \*\.parquet in this"):
    suites.read_suite("vstar", str(tmp_path))
  with pytest.raises(ValueError, match=r"chartqapro reads the ahmed-masry/ChartQAPro"):
    suites.read_suite("chartqapro", csv_file)
  not_parquet = _write(tmp_path / "test.parquet", b"not parquet at all")
  with pytest.raises(ValueError, match=r"test\.parquet: cannot be read as the ahmed-masry"):
    suites.read_suite("chartqapro", not_parquet)
  no_image_column = str(tmp_path / "cols" / "hr_bench_4k.tsv")
  os.makedirs(os.path.dirname(no_image_column))
  _tsv(no_image_column, ["index", "question", "answer"], [["0", "q", "A"]])
  with pytest.raises(ValueError, match=r"no column\(s\) \['image'\]"):
    suites.read_suite("hrbench4k", no_image_column)


# ---- OCRBench ------------------------------------------------------------------------------------


def _ocrbench_layout(tmp_path):
  """The repository layout: OCRBench/OCRBench.json with OCRBench_Images/ beside its folder."""
  images = tmp_path / "OCRBench_Images"
  _write(images / "IIIT5K" / "test" / "918_1.png", _png("red"))
  _write(images / "ctw" / "imgs" / "55.jpg", _jpeg("blue"))
  _write(images / "svt" / "broken.png", GARBAGE)
  rows = [
    {
      "dataset_name": "IIIT5K",
      "id": 2843,
      "image_path": "IIIT5K/test/918_1.png",
      "question": "what is written in the image?",
      "answers": "CENTRE",
      "type": "Regular Text Recognition",
    },
    {
      "dataset_name": "ctw",
      "id": 2843,
      "image_path": "ctw/imgs/55.jpg",
      "question": "what is written in the image?",
      "answers": ["ANTONIOS", "ANTONIO'S"],
      "type": "Irregular Text Recognition",
    },
    {
      "dataset_name": "svt",
      "id": 1,
      "image_path": "svt/missing.png",
      "question": "q?",
      "answers": "x",
      "type": "Regular Text Recognition",
    },
    {
      "dataset_name": "svt",
      "id": 2,
      "image_path": "svt/broken.png",
      "question": "q?",
      "answers": "x",
      "type": "Regular Text Recognition",
    },
    {
      "dataset_name": "svt",
      "id": 3,
      "image_path": "IIIT5K/test/918_1.png",
      "question": "q?",
      "answers": [],
      "type": "Regular Text Recognition",
    },
    {
      "dataset_name": "svt",
      "id": 4,
      "image_path": "IIIT5K/test/918_1.png",
      "question": " ",
      "answers": "x",
      "type": "Regular Text Recognition",
    },
  ]
  return _write(tmp_path / "OCRBench" / "OCRBench.json", json.dumps(rows).encode())


def test_ocrbench_json_items_and_bad_rows(tmp_path):
  path = _ocrbench_layout(tmp_path)
  items, bad = suites.read_suite("ocrbench", path)
  assert [i.id for i in items] == ["IIIT5K-2843", "ctw-2843"]  # `id` alone repeats.
  first, second = items
  assert first.suite == "ocrbench" and first.question == "what is written in the image?"
  assert first.answers == ["CENTRE"] and second.answers == ["ANTONIOS", "ANTONIO'S"]
  assert first.image == str(tmp_path / "OCRBench_Images" / "IIIT5K" / "test" / "918_1.png")
  assert _pixel(first.image) == (255, 0, 0) and _near(_pixel(second.image), (0, 0, 255))
  assert first.source == f"{path}:0" and second.source == f"{path}:1"
  assert first.category == "Regular Text Recognition"
  assert second.category == "Irregular Text Recognition"
  assert first.required_transforms == [] and first.target_box is None
  assert first.extra == {"dataset_name": "IIIT5K", "id": 2843}
  assert all(b.suite == "ocrbench" and b.file == path for b in bad)
  reasons = _bad(bad)
  assert sorted(reasons) == [2, 3, 4, 5]
  assert "OCRBench_Images/svt/missing.png does not exist" in reasons[2]
  assert "put the OCRBench images in OCRBench_Images/" in reasons[2]
  assert "broken.png cannot be decoded" in reasons[3]
  assert reasons[4] == "no ground truth in field 'answers'"
  assert reasons[5] == "no question in field 'question'"
  # The directory holding the benchmark reads the same; `limit` counts bad rows too.
  again, _ = suites.read_suite("ocrbench", str(tmp_path))
  assert [i.id for i in again] == ["IIIT5K-2843", "ctw-2843"]
  items, bad = suites.read_suite("ocrbench", path, limit=3)
  assert len(items) == 2 and [b.row for b in bad] == [2]
  items, bad = suites.read_suite("ocrbench", path, limit=1)
  assert [i.id for i in items] == ["IIIT5K-2843"] and bad == []


def test_ocrbench_vlmevalkit_tsv(tmp_path):
  path = _tsv(
    tmp_path / "OCRBench.tsv",
    ["index", "image", "question", "answer", "category"],
    [
      ["0", _b64(_png("green")), "what is written?", "['CENTRE', 'centre']", "Doc-oriented VQA"],
      ["1", "0", "and here?", "plain answer", "Key Information Extraction"],  # Image of row 0.
      ["2", _b64(GARBAGE * 4), "q?", "['x']", "Doc-oriented VQA"],
      ["3", _b64(_png("green")), "q?", "", "Doc-oriented VQA"],
      ["4", "99", "q?", "['x']", "Doc-oriented VQA"],
      ["1", _b64(_png("white")), "repeated index", "['y']", "Doc-oriented VQA"],
    ],
  )
  items, bad = suites.read_suite("ocrbench", path)
  assert [i.id for i in items] == ["0", "1", "1@5"]  # A repeated id is made unique.
  assert items[0].answers == ["CENTRE", "centre"] and items[1].answers == ["plain answer"]
  assert items[1].image is items[0].image  # The referenced image, shared.
  assert _pixel(items[0].image) == (0, 128, 0) and _pixel(items[2].image) == (255, 255, 255)
  assert items[1].category == "Key Information Extraction" and items[1].source == f"{path}:1"
  reasons = _bad(bad)
  assert sorted(reasons) == [2, 3, 4]
  assert reasons[2].startswith("the image cannot be decoded")
  assert reasons[3] == "no ground truth in field 'answer'"
  assert "row index '99', which no earlier row holds" in reasons[4]


# ---- ChartQAPro ----------------------------------------------------------------------------------


def test_chartqapro_parquet(tmp_path):
  rows = [
    {
      "Question": ["Which year had the most sales?"],
      "Answer": ["2016"],
      "Question Type": "Factoid",
      "Year": ["YES"],
      "Paragraph": None,
      "image": _png("red"),
    },
    {
      "Question": ["What is the top value?", "Which bar is it?", "How far below is the next?"],
      "Answer": ["40", "Apples", "5"],
      "Question Type": "Conversational",
      "Year": ["NO", "NO", "NO"],
      "Paragraph": "Sales by fruit in 2020.",
      "image": _jpeg("blue"),
    },
    {
      "Question": ["q?"],
      "Answer": ["a"],
      "Question Type": "Factoid",
      "Year": ["NO"],
      "Paragraph": None,
      "image": GARBAGE,
    },
    {"Question": ["q?"], "Answer": [], "Question Type": "Factoid", "Year": [], "Paragraph": None, "image": _png("red")},
    {
      "Question": [],
      "Answer": ["a"],
      "Question Type": "Factoid",
      "Year": ["NO"],
      "Paragraph": None,
      "image": _png("red"),
    },
  ]
  path = str(tmp_path / "data" / "test-00000-of-00001.parquet")
  os.makedirs(os.path.dirname(path))
  pq.write_table(pa.Table.from_pylist(rows), path)
  items, bad = suites.read_suite("chartqapro", str(tmp_path))  # The HF snapshot directory.
  factoid, conv = items
  assert [factoid.id, conv.id] == ["0", "1"]
  assert factoid.question == "Which year had the most sales?" and factoid.answers == ["2016"]
  assert factoid.category == "Factoid" and factoid.extra["year_flags"] == ["YES"]
  assert _pixel(factoid.image) == (255, 0, 0) and _near(_pixel(conv.image), (0, 0, 255))
  assert conv.question == (
    "Context: Sales by fruit in 2020.\n\n"
    "Earlier questions about this chart and their answers:\n"
    "Q: What is the top value?\nA: 40\nQ: Which bar is it?\nA: Apples\n\n"
    "Question: How far below is the next?"
  )
  assert conv.answers == ["5"] and conv.category == "Conversational"
  assert conv.source == f"{path}:1"
  reasons = _bad(bad)
  assert sorted(reasons) == [2, 3, 4]
  assert reasons[2].startswith("the image cannot be decoded")
  assert reasons[3] == "no ground truth in field 'Answer'"
  assert reasons[4] == "no question in field 'Question'"


# ---- MVToolBench ---------------------------------------------------------------------------------


def _verl_row(image, truth="HELLO", index=0, transforms=(), box=(), question="What is written?"):
  return {
    "prompt": [{"role": "system", "content": "You can run code."}, {"role": "user", "content": f"<image>\n{question}"}],
    "images": [image],
    "data_source": "mvtoolbench",
    "reward_model": {"ground_truth": truth, "style": "rule"},
    "extra_info": {
      "index": index,
      "question": question,
      "answer": truth or "",
      "required_transforms": list(transforms),
      "gt_bbox": list(box),
    },
  }


def test_mvtoolbench_verl_parquet(tmp_path):
  _write(tmp_path / "imgs" / "ok.png", _png("blue"))
  rows = [
    _verl_row(
      {"bytes": _png("red"), "path": None}, index=10, transforms=["crop", "rotate_90"], box=[1.0, 2.0, 5.0, 6.0]
    ),
    _verl_row({"bytes": None, "path": "imgs/missing.png"}, index=11),
    _verl_row({"bytes": GARBAGE, "path": None}, index=12),
    _verl_row({"bytes": _png("red"), "path": None}, truth=None, index=13),
    _verl_row({"bytes": None, "path": "imgs/ok.png"}, truth="7", index=14, transforms=["flip_vertical"]),
    _verl_row({"bytes": _png("red"), "path": None}, index=15, question=""),
  ]
  path = str(tmp_path / "mvtoolbench.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  items, bad = suites.read_suite("mvtoolbench", path)
  first, second = items
  assert [first.id, second.id] == ["10", "14"]
  assert first.question == "What is written?"  # The user text, placeholder removed.
  assert first.answers == ["HELLO"] and second.answers == ["7"]
  assert first.required_transforms == ["crop", "rotate_90"]
  assert first.target_box == [1.0, 2.0, 5.0, 6.0] and second.target_box is None
  assert first.category == "crop+rotate_90" and second.category == "flip_vertical"
  assert isinstance(first.image, bytes) and _pixel(first.image) == (255, 0, 0)
  assert second.image == str(tmp_path / "imgs" / "ok.png") and _pixel(second.image) == (0, 0, 255)
  assert first.extra["data_source"] == "mvtoolbench" and first.source == f"{path}:0"
  reasons = _bad(bad)
  assert sorted(reasons) == [1, 2, 3, 5]
  assert "missing image file" in reasons[1] and "imgs/missing.png" in reasons[1]
  assert reasons[2].startswith("the image cannot be decoded")
  assert reasons[3].startswith("no ground truth in field 'reward_model.ground_truth'")
  assert reasons[5].startswith("no question")
  items, bad = suites.read_suite("mvtoolbench", path, limit=2)
  assert [i.id for i in items] == ["10"] and [b.row for b in bad] == [1]


# ---- V* Bench ------------------------------------------------------------------------------------


def _vstar_text(question, options):
  return "\n".join([question, *(f"({k}) {v}" for k, v in zip("ABCD", options)), INSTR])


def test_vstar_jsonl(tmp_path):
  root = tmp_path / "vstar_bench"
  _write(root / "direct_attributes" / "sa_1.jpg", _jpeg("red", (40, 30)))
  _write(
    root / "direct_attributes" / "sa_1.json", json.dumps({"target_object": ["glove"], "bbox": [[2, 3, 4, 5]]}).encode()
  )
  _write(root / "relative_position" / "sa_2.jpg", _jpeg("blue", (40, 30)))
  _write(root / "direct_attributes" / "sa_3.jpg", GARBAGE)
  text = _vstar_text("What is the color of the glove?", ["red", "blue", "white", "black"])
  lines = [
    {
      "image": "direct_attributes/sa_1.jpg",
      "text": text,
      "category": "direct_attributes",
      "question_id": 0,
      "label": "A",
    },
    {
      "image": "relative_position/sa_2.jpg",
      "text": "Is the cup left of the dog?\n(A) yes\n(B) no\n" + INSTR,
      "category": "relative_position",
      "question_id": 1,
      "label": "B",
    },
    {
      "image": "direct_attributes/sa_9.jpg",
      "text": text,
      "category": "direct_attributes",
      "question_id": 2,
      "label": "A",
    },
    {
      "image": "direct_attributes/sa_3.jpg",
      "text": text,
      "category": "direct_attributes",
      "question_id": 3,
      "label": "A",
    },
    {"image": "direct_attributes/sa_1.jpg", "text": text, "category": "direct_attributes", "question_id": 4},
  ]
  body = "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n"  # A blank line is not a row.
  body += "\n".join(json.dumps(x) for x in lines[2:]) + "\n{not json\n"
  path = _write(root / "test_questions.jsonl", body.encode())
  items, bad = suites.read_suite("vstar", str(root))
  first, second = items
  assert [first.id, second.id] == ["0", "1"]
  assert first.question == text and "(D) black" in first.question
  assert first.answers == ["A"] and second.answers == ["B"]
  assert first.image == str(root / "direct_attributes" / "sa_1.jpg")
  assert _near(_pixel(first.image), (255, 0, 0)) and _near(_pixel(second.image), (0, 0, 255))
  assert first.target_box == [2.0, 3.0, 6.0, 8.0]  # [x, y, w, h] in the annotation.
  assert second.target_box is None and second.extra["target_boxes"] == []
  assert first.category == "direct_attributes" and second.source == f"{path}:1"
  reasons = _bad(bad)
  assert sorted(reasons) == [2, 3, 4, 5]
  assert "sa_9.jpg does not exist" in reasons[2]
  assert "sa_3.jpg cannot be decoded" in reasons[3]
  assert reasons[4] == "no ground truth in field 'label'"
  assert "not valid JSON" in reasons[5]


def test_vstar_parquet_with_hf_image_dicts(tmp_path):
  rows = [
    {
      "image": {"bytes": _png("red"), "path": "sa_1.jpg"},
      "text": "Q?\n(A) x\n(B) y",
      "category": "direct_attributes",
      "question_id": 7,
      "label": "b",
    }
  ]
  path = str(tmp_path / "test-00000.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  (item,), bad = suites.read_suite("vstar", path)
  assert bad == [] and item.id == "7" and item.answers == ["B"]
  assert _pixel(item.image) == (255, 0, 0)


# ---- HR-Bench ------------------------------------------------------------------------------------

_HR_HEADER = ["index", "question", "answer", "category", "cycle_category", "image", "A", "B", "C", "D"]
_HR_OPTIONS = ["red", "green", "blue", "white"]


def _noise_png(size=(256, 256)):
  """An incompressible PNG, whose base64 is longer than csv's default field limit."""
  return records.png_bytes(Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)))


def test_hrbench_tsv(tmp_path):
  big = _b64(_noise_png())
  assert len(big) > csv.field_size_limit()
  path = _tsv(
    tmp_path / "hr_bench_4k.tsv",
    _HR_HEADER,
    [
      ["0", "What color is the sign?", "A", "FSP", "cycle0", _b64(_jpeg("red")), *_HR_OPTIONS],
      ["1", "What color is the sign?", "B", "FSP", "cycle1", "0", *_HR_OPTIONS],
      ["2", "How big is it?", "C", "FCP", "cycle0", big, *_HR_OPTIONS],
      ["3", "q?", "E", "FSP", "cycle0", _b64(_jpeg("red")), *_HR_OPTIONS],
      ["4", "q?", "A", "FSP", "cycle0", _b64(GARBAGE * 4), *_HR_OPTIONS],
      ["5", "", "A", "FSP", "cycle0", _b64(_jpeg("red")), *_HR_OPTIONS],
    ],
  )
  limit_before = csv.field_size_limit()
  items, bad = suites.read_suite("hrbench4k", path)
  assert csv.field_size_limit() == limit_before  # Restored.
  assert [i.id for i in items] == ["0", "1", "2"]
  first = items[0]
  assert first.suite == "hrbench4k" and first.answers == ["A"] and items[1].answers == ["B"]
  assert first.question == (
    "What color is the sign?\nA. red\nB. green\nC. blue\nD. white\n"
    "Answer with the option's letter from the given choices directly."
  )
  assert first.category == "FSP" and first.extra["cycle_category"] == "cycle0"
  assert first.extra["options"] == dict(zip("ABCD", _HR_OPTIONS))
  assert items[1].image is first.image and _near(_pixel(first.image), (255, 0, 0))
  assert records.load_image(items[2].image).size == (256, 256)
  assert first.source == f"{path}:0" and all(b.file == path for b in bad)
  reasons = _bad(bad)
  assert sorted(reasons) == [3, 4, 5]
  assert reasons[3] == "ground truth 'E' in field 'answer' is not one of the options A, B, C, D"
  assert reasons[4].startswith("the image cannot be decoded")
  assert reasons[5] == "no question in field 'question'"
  items, bad = suites.read_suite("hrbench4k", str(tmp_path), limit=2)
  assert [i.id for i in items] == ["0", "1"] and bad == []
  with pytest.raises(ValueError, match=r"hr_bench_4k\.tsv: this is HR-Bench 4K, but hrbench8k"):
    suites.read_suite("hrbench8k", path)


def test_hrbench8k_parquet(tmp_path):
  rows = [
    {
      "index": 0,
      "question": "Which side?",
      "answer": "D",
      "category": "FCP",
      "cycle_category": "cycle2",
      "image": _b64(_jpeg("blue")),
      "A": "left",
      "B": "right",
      "C": "top",
      "D": "bottom",
    }
  ]
  path = str(tmp_path / "hrbench_version_split" / "hrbench_8k-00000-of-00001.parquet")
  os.makedirs(os.path.dirname(path))
  pq.write_table(pa.Table.from_pylist(rows), path)
  (item,), bad = suites.read_suite("hrbench8k", str(tmp_path))
  assert bad == [] and item.id == "0" and item.answers == ["D"]
  assert item.question.splitlines()[1:5] == ["A. left", "B. right", "C. top", "D. bottom"]
  assert _near(_pixel(item.image), (0, 0, 255)) and item.source == f"{path}:0"
