"""Readers for published VQA benchmark files: each row becomes an `EvalItem`, or a `BadItem` that
says what is wrong with it. Nothing is dropped silently.

    items, bad = read_suite("hrbench4k", "/data/HR-Bench/hr_bench_4k.tsv", limit=100)

`path` is the benchmark file as published, or a directory holding it (searched recursively).
Suites, their published formats, and where those were checked:

* ocrbench: `OCRBench.json`, a list of {dataset_name, id, image_path, question, answers (text or
  list), type}, images under `OCRBench_Images/` beside the JSON or beside its folder
  (Yuliang-Liu/MultimodalOCR); VLMEvalKit's `OCRBench.tsv` (index, image as base64, question,
  answer as a Python-list text, category); the echo840/OCRBench `.parquet` (lmms-eval).
* chartqapro: the ahmed-masry/ChartQAPro `.parquet`: Question and Answer (lists; several turns
  for "Conversational", whose last answer is scored), Question Type, Year, Paragraph, image
  (bytes) (vis-nlp/ChartQAPro).
* mvtoolbench: verl RL rows (prompt, images, reward_model.ground_truth, extra_info with
  required_transforms and gt_bbox) in a `.parquet` (or `.jsonl` / `.json`), read by
  `codevision_jax.data.readers`.
* vstar: craigwu/vstar_bench `test_questions.jsonl` ({image, text, category, question_id,
  label}) with the images beside it, and each image's `<stem>.json` annotation (bbox as
  [x, y, w, h]) when present (penghao-wu/vstar); the lmms-lab/vstar-bench `.parquet`.
* hrbench4k, hrbench8k: DreamMr/HR-Bench `hr_bench_4k.tsv` / `hr_bench_8k.tsv` (index,
  question, answer, A-D, category, cycle_category, image as base64), or a `.parquet` with those
  columns.

Multiple-choice suites keep their ground truth as the option letter ("A"), which is what
`codevision_jax.rl.reward.answers_match` scores. A bad row (no question, no ground truth, a
missing image file, an image that does not decode) becomes a `BadItem`; a file that is missing or
not in the published format raises, naming the path and the file expected.

Any suite also reads "tfds:NAME@DIR": the RL records of a TFDS set that `launch.prepare_tfds`
made (e.g. of MVToolBench's parquet), one item per record as an MVToolBench row (`read_tfds`).
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import csv
import dataclasses
import functools
import glob
import hashlib
import io
import itertools
import json
import math
import os
import string
import sys
from typing import Callable

from PIL import Image

from codevision_jax.data import readers
from codevision_jax.processing import code_tool

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_OCRBENCH_IMAGE_DIR = "OCRBench_Images"
_REF_MAX_CHARS = 64  # VLMEvalKit: an image field this short names the row holding the image.


@dataclasses.dataclass
class EvalItem:
  """One benchmark question, ready for the eval binary."""
  suite: str  # the suite name (a key of SUITES)
  id: str  # stable and unique within the suite: the published id/index, else the row number
  question: str  # the text shown after the image (options included, as the suite words them)
  answers: list[str]  # accepted ground truths, non-empty
  image: bytes | str  # encoded image bytes (PNG/JPEG), or an absolute path to the image file
  source: str  # "<file>:<row>" (row 0-based), for messages
  required_transforms: list[str] = dataclasses.field(default_factory=list)
  target_box: list[float] | None = None  # [x1, y1, x2, y2] in the image's pixels, where published
  category: str = ""  # the suite's own category / type field, for per-category accuracy
  extra: dict = dataclasses.field(default_factory=dict)  # raw ids, options, other metadata


@dataclasses.dataclass
class BadItem:
  """A row that could not become an item, and why."""
  suite: str
  file: str
  row: int
  reason: str  # what is wrong and, where useful, what to do


class _BadRow(ValueError):
  """A row that cannot become an item; the message is the BadItem's reason."""


# ---- small helpers on field values ---------------------------------------------------------------

def _missing(value) -> bool:
  """None, NaN, or blank text: what published files use for "no value"."""
  if value is None:
    return True
  if isinstance(value, float):
    return math.isnan(value)
  return isinstance(value, str) and not value.strip()


def _text(raw: dict, field: str, what: str) -> str:
  """The field's value as stripped text; `what` names it in the error ("question")."""
  value = raw.get(field)
  if _missing(value):
    raise _BadRow(f"no {what} in field {field!r}")
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise _BadRow(f"field {field!r} must be text, got {type(value).__name__}")
  return str(value).strip()


def _text_list(value, field: str, what: str) -> list[str]:
  """A list-of-text field (a single text counts as a list of one); its last entry must be set."""
  values = [value] if isinstance(value, str) else value
  if not isinstance(values, (list, tuple)) or not values or _missing(values[-1]):
    raise _BadRow(f"no {what} in field {field!r}")
  return [str(v).strip() for v in values]


def _answers(value, field: str) -> list[str]:
  """Accepted answers from a list, a Python-list string (VLMEvalKit TSVs) or a plain text."""
  if isinstance(value, str) and value.strip().startswith("["):
    try:
      parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      parsed = value
    value = parsed if isinstance(parsed, (list, tuple)) else value
  values = value if isinstance(value, (list, tuple)) else [value]
  answers = [str(v).strip() for v in values if not _missing(v)]
  if not answers:
    raise _BadRow(f"no ground truth in field {field!r}")
  return answers


def _item_id(raw: dict, field: str, row: int) -> str:
  """The published id in `field`, else the row number."""
  value = raw.get(field)
  return str(row) if _missing(value) else str(value).strip()


def _category(raw: dict, *fields: str) -> str:
  """The first of `fields` that is set, as text; "" when none is."""
  for field in fields:
    if not _missing(raw.get(field)):
      return str(raw[field]).strip()
  return ""


def _option_letter(value: str, field: str) -> str:
  """A multiple-choice ground truth as an upper-case option letter."""
  letter = value.strip().upper()
  if len(letter) != 1 or letter not in string.ascii_uppercase:
    raise _BadRow(f"ground truth {value!r} in field {field!r} is not an option letter (A, B, ...)")
  return letter


# ---- images --------------------------------------------------------------------------------------

def _image_file(value, field: str, root: str, hint: str = "") -> str:
  """An image path from a row, resolved against `root` and required to exist -> absolute path."""
  if _missing(value) or not isinstance(value, str):
    raise _BadRow(f"no image path in field {field!r}")
  path = os.path.abspath(os.path.join(root, value))
  if not os.path.isfile(path):
    raise _BadRow(f"image file {path} does not exist{hint}")
  return path


def _image_value(value, field: str, root: str):
  """An image from a row: bytes, a {"bytes"|"path"} dict (the HF Image feature) or a path."""
  if isinstance(value, dict):
    if value.get("bytes") is not None:
      return _image_value(value["bytes"], field, root)
    return _image_file(value.get("path"), field, root)
  if isinstance(value, (bytes, bytearray, memoryview)):
    if not value:
      raise _BadRow(f"no image in field {field!r}")
    return bytes(value)
  return _image_file(value, field, root)


class _Base64Images:
  """Images of VLMEvalKit-style tables, decoded once.

  A text field holds the image as base64, or (at most 64 characters) the `index` of an earlier row
  that holds it, VLMEvalKit's way of storing a repeated image once. Rows with the same image share
  one bytes object. Non-text fields (bytes, {"bytes"} dicts) are taken as `_image_value` takes them.
  """

  def __init__(self, root: str):
    self._root = root
    self._by_index: dict[str, bytes | str] = {}
    self._by_digest: dict[bytes, bytes] = {}

  def get(self, value, index: str, field: str = "image"):
    if _missing(value):
      raise _BadRow(f"no image in field {field!r}")
    if not isinstance(value, str):
      image = _image_value(value, field, self._root)
    elif len(value.strip()) <= _REF_MAX_CHARS:
      ref = value.strip()
      if ref not in self._by_index:
        raise _BadRow(f"field {field!r} refers to the image of row index {ref!r}, which no earlier "
                      f"row holds")
      image = self._by_index[ref]
    else:
      image = self._decode(value, field)
    self._by_index[index] = image
    return image

  def _decode(self, text: str, field: str) -> bytes:
    digest = hashlib.sha1(text.encode()).digest()
    if digest not in self._by_digest:
      try:
        self._by_digest[digest] = base64.b64decode(text)
      except (binascii.Error, ValueError) as e:
        raise _BadRow(f"field {field!r} is not base64 image data ({e})") from None
    return self._by_digest[digest]


def _check_image(image) -> None:
  """Raises _BadRow unless PIL can open and verify the image (no full decode)."""
  try:
    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
      im.verify()
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...).
    where = f"image file {image}" if isinstance(image, str) else "the image"
    raise _BadRow(f"{where} cannot be decoded ({type(e).__name__}: {e}); replace it with a PNG "
                  f"or JPEG") from None


# ---- files and rows ------------------------------------------------------------------------------

def _resolve_file(suite: str, path: str, exts: tuple, patterns: tuple, expected: str) -> str:
  """The benchmark file to read: `path` itself (with a published extension) or the first of
  `patterns` found under the directory `path` -> absolute path."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory; {suite} reads {expected}")
  path = os.path.abspath(path)
  if os.path.isdir(path):
    for pattern in patterns:
      found = sorted(glob.glob(os.path.join(path, "**", pattern), recursive=True))
      if len(found) == 1:
        return found[0]
      if found:
        raise ValueError(f"{path}: several files match {pattern!r} ({', '.join(found[:4])}); "
                         f"pass the one {suite} should read")
    raise FileNotFoundError(f"{path}: no {' or '.join(patterns)} in this directory; {suite} reads "
                            f"{expected}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in exts:
    raise ValueError(f"{path}: {suite} reads {expected}, not a {ext or 'extension-less'} file; "
                     f"pass that file (or the directory holding it)")
  return path


def _check_columns(path: str, names, required: tuple, expected: str) -> None:
  """Raises when a table lacks a column every row needs (then no row could be read)."""
  absent = [c for c in required if c not in names]
  if absent:
    raise ValueError(f"{path}: no column(s) {absent} (it has {list(names)[:12]}); expected "
                     f"{expected}")


@contextlib.contextmanager
def _large_csv_fields():
  """Lets csv read fields of any size (base64 8K images), restoring the limit afterwards."""
  old, limit = csv.field_size_limit(), sys.maxsize
  while True:
    try:
      csv.field_size_limit(limit)
      break
    except OverflowError:  # A C long is 32 bits on some platforms.
      limit //= 2
  try:
    yield
  finally:
    csv.field_size_limit(old)


def _tsv_rows(path: str, required: tuple, expected: str):
  """Yields (row, {column: text}) of a tab-separated file with a header row (VLMEvalKit's TSVs,
  written by pandas); blank lines are skipped."""
  with _large_csv_fields(), open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if not header:
      raise ValueError(f"{path}: empty file; expected {expected}")
    _check_columns(path, header, required, expected)
    row = 0
    for values in reader:
      if values:
        yield row, dict(zip(header, values))
        row += 1


def _parquet_rows(path: str, required: tuple, expected: str):
  """Yields (row, dict) of a Parquet file, a few rows in memory at a time."""
  import pyarrow.parquet as pq  # Imported lazily: only Parquet suites need it.
  parquet = pq.ParquetFile(path)
  _check_columns(path, parquet.schema_arrow.names, required, expected)
  row = 0
  for batch in parquet.iter_batches(batch_size=16):
    for raw in batch.to_pylist():
      yield row, raw
      row += 1


def _table_rows(path: str, required: tuple, expected: str):
  """Rows of a .tsv or .parquet table."""
  if path.lower().endswith(".tsv"):
    return _tsv_rows(path, required, expected)
  return _parquet_rows(path, required, expected)


def _file_errors():
  """Exceptions that mean the file as a whole is not in the expected format."""
  errors = [json.JSONDecodeError, csv.Error, UnicodeDecodeError]
  try:
    import pyarrow
    errors.append(pyarrow.ArrowException)
  except ImportError:
    pass
  return tuple(errors)


def _unique_ids(items: list[EvalItem]) -> list[EvalItem]:
  """Makes repeated ids unique by appending "@<row>" to the later ones."""
  seen = set()
  for item in items:
    if item.id in seen:
      item.id = f"{item.id}@{item.source.rsplit(':', 1)[1]}"
    seen.add(item.id)
  return items


def _read(suite: str, path: str, rows, to_item: Callable, limit: int, expected: str):
  """Turns each (row, raw) of `rows` into an item with a decodable image, or a BadItem."""
  items, bad = [], []
  rows = iter(rows)
  try:
    for row, raw in itertools.islice(rows, limit if limit > 0 else None):
      try:
        if isinstance(raw, Exception):
          raise raw
        item = to_item(raw, row)
        _check_image(item.image)
      except (ValueError, TypeError, KeyError) as e:
        bad.append(BadItem(suite=suite, file=path, row=row, reason=str(e) or type(e).__name__))
        continue
      items.append(item)
  except _file_errors() as e:
    raise ValueError(f"{path}: cannot be read as {expected} ({type(e).__name__}: {e})") from None
  finally:
    if hasattr(rows, "close"):
      rows.close()
  return _unique_ids(items), bad


# ---- OCRBench ------------------------------------------------------------------------------------

_OCRBENCH_EXPECTED = ("OCRBench.json (images in OCRBench_Images/ beside it or beside its folder), "
                      "VLMEvalKit's OCRBench.tsv, or the echo840/OCRBench .parquet")


def _ocrbench_image_root(json_path: str) -> str:
  """OCRBench_Images beside the JSON, or beside its folder (the repository's layout), else the
  JSON's folder."""
  folder = os.path.dirname(json_path)
  for root in (folder, os.path.dirname(folder)):
    candidate = os.path.join(root, _OCRBENCH_IMAGE_DIR)
    if os.path.isdir(candidate):
      return candidate
  return folder


def _ocrbench_json_item(raw, row: int, *, path: str, image_root: str) -> EvalItem:
  if not isinstance(raw, dict):
    raise _BadRow(f"a row must be an object, got {type(raw).__name__}")
  question = _text(raw, "question", "question")
  answers = _answers(raw.get("answers"), "answers")
  image = _image_file(raw.get("image_path"), "image_path", image_root,
                      f"; put the OCRBench images in {_OCRBENCH_IMAGE_DIR}/ beside the JSON")
  name, pid = raw.get("dataset_name"), raw.get("id")
  # `id` repeats across the source datasets; with `dataset_name` it is unique.
  unique = not _missing(name) and not _missing(pid)
  item_id = f"{name}-{pid}" if unique else _item_id(raw, "id", row)
  return EvalItem(suite="ocrbench", id=item_id, question=question, answers=answers, image=image,
                  source=f"{path}:{row}", category=_category(raw, "type"),
                  extra={"dataset_name": name, "id": pid})


def _ocrbench_table_item(raw, row: int, *, path: str, images: _Base64Images) -> EvalItem:
  item_id = _item_id(raw, "index", row)
  image = images.get(raw.get("image"), item_id)
  return EvalItem(suite="ocrbench", id=item_id, question=_text(raw, "question", "question"),
                  answers=_answers(raw.get("answer"), "answer"), image=image,
                  source=f"{path}:{row}", category=_category(raw, "category", "question_type"),
                  extra={"index": raw.get("index"), "dataset_name": raw.get("dataset")})


def read_ocrbench(path: str, limit: int = 0):
  """OCRBench (1000 OCR questions; several accepted answers per question, scored by containment)."""
  file = _resolve_file("ocrbench", path, (".json", ".tsv", ".parquet"),
                       ("OCRBench.json", "OCRBench.tsv", "*.parquet"), _OCRBENCH_EXPECTED)
  if file.lower().endswith(".json"):
    rows = readers.load_raw(file)
    to_item = functools.partial(_ocrbench_json_item, path=file,
                                image_root=_ocrbench_image_root(file))
  else:
    rows = _table_rows(file, ("question", "answer", "image"), _OCRBENCH_EXPECTED)
    to_item = functools.partial(_ocrbench_table_item, path=file,
                                images=_Base64Images(os.path.dirname(file)))
  return _read("ocrbench", file, rows, to_item, limit, _OCRBENCH_EXPECTED)


# ---- ChartQAPro ----------------------------------------------------------------------------------

_CHARTQAPRO_EXPECTED = ("the ahmed-masry/ChartQAPro test .parquet (columns Question, Answer, "
                        "Question Type, image)")


def _chartqapro_question(questions: list[str], answers: list[str], paragraph: str = "") -> str:
  """The text asked: the last question, after the paragraph and the earlier turns (conversational
  rows) when there are any."""
  parts = [f"Context: {paragraph}"] if paragraph else []
  turns = [f"Q: {q}\nA: {a}" for q, a in zip(questions[:-1], answers[:-1])]
  if turns:
    parts.append("Earlier questions about this chart and their answers:\n" + "\n".join(turns))
  if not parts:
    return questions[-1]
  return "\n\n".join(parts + [f"Question: {questions[-1]}"])


def _chartqapro_item(raw, row: int, *, path: str) -> EvalItem:
  questions = _text_list(raw.get("Question"), "Question", "question")
  answers = _text_list(raw.get("Answer"), "Answer", "ground truth")
  image = _image_value(raw.get("image"), "image", os.path.dirname(path))
  paragraph = "" if _missing(raw.get("Paragraph")) else str(raw["Paragraph"]).strip()
  qtype = _category(raw, "Question Type")
  return EvalItem(suite="chartqapro", id=_item_id(raw, "id", row),
                  question=_chartqapro_question(questions, answers, paragraph),
                  answers=[answers[-1]],  # The official scorer scores the last answer only.
                  image=image, source=f"{path}:{row}", category=qtype,
                  extra={"question_type": qtype, "questions": questions, "answers": answers,
                         "year_flags": raw.get("Year"), "paragraph": paragraph})


def read_chartqapro(path: str, limit: int = 0):
  """ChartQAPro (charts, infographics, dashboards; conversational rows asked at their last turn)."""
  file = _resolve_file("chartqapro", path, (".parquet",), ("*.parquet",), _CHARTQAPRO_EXPECTED)
  rows = _parquet_rows(file, ("Question", "Answer", "image"), _CHARTQAPRO_EXPECTED)
  to_item = functools.partial(_chartqapro_item, path=file)
  return _read("chartqapro", file, rows, to_item, limit, _CHARTQAPRO_EXPECTED)


# ---- MVToolBench ---------------------------------------------------------------------------------

_MVTOOLBENCH_EXPECTED = ("verl RL rows (prompt, images, reward_model.ground_truth, extra_info) in "
                         "a .parquet, .jsonl or .json")


def _mvtoolbench_item(raw, row: int, *, path: str) -> EvalItem:
  conv = readers.normalise_record(raw, os.path.dirname(path), require_assistant=False)
  return _record_item(conv, row, suite="mvtoolbench", source=f"{path}:{row}")


def _record_item(conv, row: int, *, suite: str, source: str) -> EvalItem:
  """A normalised RL record (`records.Conversation`, verl fields) -> an item of `suite`."""
  texts = (m["content"].replace(code_tool.IMAGE_PLACEHOLDER, "").strip()
           for m in conv.messages if m["role"] == "user")
  question = "\n".join(t for t in texts if t)
  if not question:
    raise _BadRow("no question: the user prompt in field 'prompt' has no text")
  truth = conv.ground_truth if not _missing(conv.ground_truth) else conv.answer
  if _missing(truth):
    raise _BadRow("no ground truth in field 'reward_model.ground_truth' (nor extra_info.answer)")
  if len(conv.images) != 1:
    raise _BadRow(f"{len(conv.images)} images in field 'images'; an eval item takes exactly one")
  box = conv.target_box or None
  if box is not None and len(box) != 4:
    raise _BadRow(f"target box {box} (extra_info.gt_bbox / bbox) must be [x1, y1, x2, y2]")
  transforms = list(conv.required_transforms or [])
  extra = dict(conv.extra, data_source=conv.data_source)
  category = _category(conv.extra, "category", "type") or "+".join(transforms)
  return EvalItem(suite=suite, id=_item_id(conv.extra, "index", row), question=question,
                  answers=[str(truth).strip()], image=conv.images[0], source=source,
                  required_transforms=transforms, target_box=box, category=category, extra=extra)


def read_mvtoolbench(path: str, limit: int = 0):
  """MVToolBench (each image rotated or flipped; the question needs a small text region)."""
  file = _resolve_file("mvtoolbench", path, (".parquet", ".jsonl", ".json"), ("*.parquet",),
                       _MVTOOLBENCH_EXPECTED)
  to_item = functools.partial(_mvtoolbench_item, path=file)
  return _read("mvtoolbench", file, readers.load_raw(file), to_item, limit, _MVTOOLBENCH_EXPECTED)


# ---- V* Bench ------------------------------------------------------------------------------------

_VSTAR_EXPECTED = ("test_questions.jsonl (craigwu/vstar_bench, images beside it) or the "
                   "lmms-lab/vstar-bench .parquet")


def _vstar_boxes(image) -> list[list[float]]:
  """The target boxes of V*'s per-image annotation (`<image stem>.json`, `bbox` as [x, y, w, h]
  lists) as [x1, y1, x2, y2]; [] when there is no readable annotation (it is optional)."""
  if not isinstance(image, str):
    return []
  try:
    with open(os.path.splitext(image)[0] + ".json", encoding="utf-8") as f:
      boxes = json.load(f).get("bbox") or []
    return [[float(x), float(y), float(x) + float(w), float(y) + float(h)] for x, y, w, h in boxes]
  except (OSError, ValueError, TypeError, AttributeError):
    return []


def _vstar_item(raw, row: int, *, path: str) -> EvalItem:
  if not isinstance(raw, dict):
    raise _BadRow(f"a row must be an object, got {type(raw).__name__}")
  question = _text(raw, "text", "question")
  label = _option_letter(_text(raw, "label", "ground truth"), "label")
  image = _image_value(raw.get("image"), "image", os.path.dirname(path))
  boxes = _vstar_boxes(image)
  return EvalItem(suite="vstar", id=_item_id(raw, "question_id", row), question=question,
                  answers=[label], image=image, source=f"{path}:{row}",
                  target_box=boxes[0] if len(boxes) == 1 else None,
                  category=_category(raw, "category"),
                  extra={"question_id": raw.get("question_id"), "target_boxes": boxes})


def read_vstar(path: str, limit: int = 0):
  """V* Bench (small objects in high-resolution images; 4-way multiple choice)."""
  file = _resolve_file("vstar", path, (".jsonl", ".parquet"),
                       ("test_questions.jsonl", "*.parquet"), _VSTAR_EXPECTED)
  if file.lower().endswith(".jsonl"):
    rows = readers.load_raw(file)
  else:
    rows = _parquet_rows(file, ("text", "label", "image"), _VSTAR_EXPECTED)
  to_item = functools.partial(_vstar_item, path=file)
  return _read("vstar", file, rows, to_item, limit, _VSTAR_EXPECTED)


# ---- HR-Bench ------------------------------------------------------------------------------------

def _mcq_question(question: str, options: dict[str, str]) -> str:
  """The question, its options as "A. ..." lines, then the instruction to answer with a letter."""
  return "\n".join([question, *(f"{k}. {v}" for k, v in options.items()), MCQ_INSTRUCTION])


def _hrbench_item(raw, row: int, *, suite: str, path: str, images: _Base64Images) -> EvalItem:
  item_id = _item_id(raw, "index", row)
  image = images.get(raw.get("image"), item_id)  # First: later rows may refer to this image.
  question = _text(raw, "question", "question")
  options = {k: str(raw[k]).strip() for k in string.ascii_uppercase if not _missing(raw.get(k))}
  if not options:
    raise _BadRow("no options in columns A, B, C, D")
  answer = _option_letter(_text(raw, "answer", "ground truth"), "answer")
  if answer not in options:
    raise _BadRow(f"ground truth {answer!r} in field 'answer' is not one of the options "
                  f"{', '.join(options)}")
  return EvalItem(suite=suite, id=item_id, question=_mcq_question(question, options),
                  answers=[answer], image=image, source=f"{path}:{row}",
                  category=_category(raw, "category"),
                  extra={"index": raw.get("index"), "options": options,
                         "cycle_category": raw.get("cycle_category")})


def _read_hrbench(suite: str, resolution: str, path: str, limit: int):
  expected = f"hr_bench_{resolution}.tsv (DreamMr/HR-Bench) or a .parquet with the same columns"
  file = _resolve_file(suite, path, (".tsv", ".parquet"),
                       (f"hr_bench_{resolution}.tsv", f"*{resolution}*.parquet"), expected)
  other = "8k" if resolution == "4k" else "4k"
  if other in os.path.basename(file).lower():
    raise ValueError(f"{file}: this is HR-Bench {other.upper()}, but {suite} reads {expected}")
  rows = _table_rows(file, ("question", "answer", "image"), expected)
  to_item = functools.partial(_hrbench_item, suite=suite, path=file,
                              images=_Base64Images(os.path.dirname(file)))
  return _read(suite, file, rows, to_item, limit, expected)


def read_hrbench4k(path: str, limit: int = 0):
  """HR-Bench 4K (4K crops of the 8K images; 4-way multiple choice in 4 option orders)."""
  return _read_hrbench("hrbench4k", "4k", path, limit)


def read_hrbench8k(path: str, limit: int = 0):
  """HR-Bench 8K (8K images; 4-way multiple choice in 4 option orders)."""
  return _read_hrbench("hrbench8k", "8k", path, limit)


# ---- the registry --------------------------------------------------------------------------------

SUITES: dict[str, Callable[[str, int], tuple[list[EvalItem], list[BadItem]]]] = {
    "ocrbench": read_ocrbench,
    "chartqapro": read_chartqapro,
    "mvtoolbench": read_mvtoolbench,
    "vstar": read_vstar,
    "hrbench4k": read_hrbench4k,
    "hrbench8k": read_hrbench8k,
}


def read_suite(name: str, path: str, *, limit: int = 0) -> tuple[list[EvalItem], list[BadItem]]:
  """Items and bad items of suite `name` read from `path` (a file, or for suites published as a
  directory, the directory, or "tfds:NAME@DIR", a prepared TFDS set: `read_tfds`); `limit` > 0:
  only the first `limit` rows are read (bad ones count toward the limit)."""
  if name not in SUITES:
    raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
  if path.startswith(TFDS_PREFIX):
    return read_tfds(name, path, limit)
  return SUITES[name](path, limit)


# ---- prepared TFDS sets --------------------------------------------------------------------------

TFDS_PREFIX = "tfds:"
_TFDS_EXPECTED = "a TFDS set written by python -m launch.prepare_tfds --kind=rl"


def read_tfds(suite: str, spec: str, limit: int = 0):
  """Items of `suite` from a TFDS set that `launch.prepare_tfds --kind=rl` made of verl RL rows
  (an MVToolBench parquet, held-out prompts): `spec` is "tfds:NAME@DIR" (split train) or
  "tfds:NAME:SPLIT@DIR", the command's --name, --split and --data_dir. Each record is one item
  as an MVToolBench row is (user text, ground truth, one image, required transforms, box)."""
  from codevision_jax.data import tfds_source
  names, at, data_dir = spec[len(TFDS_PREFIX):].partition("@")
  name, _, split = names.partition(":")
  if not (at and name and data_dir):
    raise ValueError(f"--data={spec}: name a TFDS set as tfds:NAME@DIR or tfds:NAME:SPLIT@DIR "
                     "(launch.prepare_tfds's --name, --split and --data_dir)")
  try:
    source = tfds_source.TfdsSource(name, data_dir, split or tfds_source.DEFAULT_SPLIT)
  except tfds_source.TfdsError as e:
    raise ValueError(f"--data={spec}: {e}") from None
  rows = ((row, source[row]) for row in range(len(source)))
  to_item = lambda conv, row: _record_item(conv, row, suite=suite, source=f"{spec}:{row}")
  return _read(suite, spec, rows, to_item, limit, _TFDS_EXPECTED)
