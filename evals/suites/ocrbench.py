"""OCRBench (1000 OCR questions; several accepted answers per question, scored by containment).

Published as `OCRBench.json`, a list of {dataset_name, id, image_path, question, answers (text or
list), type}, images under `OCRBench_Images/` beside the JSON or beside its folder
(Yuliang-Liu/MultimodalOCR); as VLMEvalKit's `OCRBench.tsv` (index, image as base64, question,
answer as a Python-list text, category); and as the echo840/OCRBench `.parquet` (lmms-eval).
"""

from __future__ import annotations

import functools
import os

from codevision_jax.data import readers
from evals.suites import fields, rows
from evals.suites.images import Base64Images, image_file
from evals.suites.items import BadRow, EvalItem

NAME = "ocrbench"
EXPECTED = (
  "OCRBench.json (images in OCRBench_Images/ beside it or beside its folder), "
  "VLMEvalKit's OCRBench.tsv, or the echo840/OCRBench .parquet"
)
_IMAGE_DIR = "OCRBench_Images"


def _image_root(json_path: str) -> str:
  """OCRBench_Images beside the JSON, or beside its folder (the repository's layout), else the
  JSON's folder."""
  folder = os.path.dirname(json_path)
  for root in (folder, os.path.dirname(folder)):
    candidate = os.path.join(root, _IMAGE_DIR)
    if os.path.isdir(candidate):
      return candidate
  return folder


def _json_item(raw, row: int, *, path: str, image_root: str) -> EvalItem:
  if not isinstance(raw, dict):
    raise BadRow(f"a row must be an object, got {type(raw).__name__}")
  question = fields.text(raw, "question", "question")
  answers = fields.answers(raw.get("answers"), "answers")
  image = image_file(
    raw.get("image_path"), "image_path", image_root, f"; put the OCRBench images in {_IMAGE_DIR}/ beside the JSON"
  )
  name, pid = raw.get("dataset_name"), raw.get("id")
  # `id` repeats across the source datasets; with `dataset_name` it is unique.
  unique = not fields.missing(name) and not fields.missing(pid)
  item_id = f"{name}-{pid}" if unique else fields.item_id(raw, "id", row)
  return EvalItem(
    suite=NAME,
    id=item_id,
    question=question,
    answers=answers,
    image=image,
    source=f"{path}:{row}",
    category=fields.category(raw, "type"),
    extra={"dataset_name": name, "id": pid},
  )


def _table_item(raw, row: int, *, path: str, images: Base64Images) -> EvalItem:
  item_id = fields.item_id(raw, "index", row)
  image = images.get(raw.get("image"), item_id)
  return EvalItem(
    suite=NAME,
    id=item_id,
    question=fields.text(raw, "question", "question"),
    answers=fields.answers(raw.get("answer"), "answer"),
    image=image,
    source=f"{path}:{row}",
    category=fields.category(raw, "category", "question_type"),
    extra={"index": raw.get("index"), "dataset_name": raw.get("dataset")},
  )


def read(path: str, limit: int = 0):
  """OCRBench (1000 OCR questions; several accepted answers per question, scored by containment)."""
  file = rows.resolve_file(
    NAME, path, (".json", ".tsv", ".parquet"), ("OCRBench.json", "OCRBench.tsv", "*.parquet"), EXPECTED
  )
  if file.lower().endswith(".json"):
    raws = readers.load_raw(file)
    to_item = functools.partial(_json_item, path=file, image_root=_image_root(file))
  else:
    raws = rows.table_rows(file, ("question", "answer", "image"), EXPECTED)
    to_item = functools.partial(_table_item, path=file, images=Base64Images(os.path.dirname(file)))
  return rows.read(NAME, file, raws, to_item, limit, EXPECTED)
