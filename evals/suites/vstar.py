"""V* Bench (small objects in high-resolution images; 4-way multiple choice).

Published as craigwu/vstar_bench `test_questions.jsonl` ({image, text, category, question_id,
label}) with the images beside it, and each image's `<stem>.json` annotation (bbox as
[x, y, w, h]) when present (penghao-wu/vstar); and as the lmms-lab/vstar-bench `.parquet`.
"""

from __future__ import annotations

import functools
import json
import os

from codevision_jax.data import readers
from evals.suites import fields, rows
from evals.suites.images import image_value
from evals.suites.items import BadRow, EvalItem

NAME = "vstar"
EXPECTED = "test_questions.jsonl (craigwu/vstar_bench, images beside it) or the lmms-lab/vstar-bench .parquet"


def _boxes(image) -> list[list[float]]:
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


def _item(raw, row: int, *, path: str) -> EvalItem:
  if not isinstance(raw, dict):
    raise BadRow(f"a row must be an object, got {type(raw).__name__}")
  question = fields.text(raw, "text", "question")
  label = fields.option_letter(fields.text(raw, "label", "ground truth"), "label")
  image = image_value(raw.get("image"), "image", os.path.dirname(path))
  boxes = _boxes(image)
  return EvalItem(
    suite=NAME,
    id=fields.item_id(raw, "question_id", row),
    question=question,
    answers=[label],
    image=image,
    source=f"{path}:{row}",
    target_box=boxes[0] if len(boxes) == 1 else None,
    category=fields.category(raw, "category"),
    extra={"question_id": raw.get("question_id"), "target_boxes": boxes},
  )


def read(path: str, limit: int = 0):
  """V* Bench (small objects in high-resolution images; 4-way multiple choice)."""
  file = rows.resolve_file(NAME, path, (".jsonl", ".parquet"), ("test_questions.jsonl", "*.parquet"), EXPECTED)
  if file.lower().endswith(".jsonl"):
    raws = readers.load_raw(file)
  else:
    raws = rows.parquet_rows(file, ("text", "label", "image"), EXPECTED)
  return rows.read(NAME, file, raws, functools.partial(_item, path=file), limit, EXPECTED)
