"""HR-Bench 4K and 8K (high-resolution images; 4-way multiple choice in 4 option orders).

Published as DreamMr/HR-Bench `hr_bench_4k.tsv` / `hr_bench_8k.tsv` (index, question, answer,
A-D, category, cycle_category, image as base64), or a `.parquet` with those columns. The ground
truth is kept as the option letter ("A"), which is what `codevision_jax.rl.reward.answers_match`
scores.
"""

from __future__ import annotations

import functools
import os
import string

from evals.suites import fields, rows
from evals.suites.images import Base64Images
from evals.suites.items import BadRow, EvalItem

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _mcq_question(question: str, options: dict[str, str]) -> str:
  """The question, its options as "A. ..." lines, then the instruction to answer with a letter."""
  return "\n".join([question, *(f"{k}. {v}" for k, v in options.items()), MCQ_INSTRUCTION])


def _item(raw, row: int, *, suite: str, path: str, images: Base64Images) -> EvalItem:
  item_id = fields.item_id(raw, "index", row)
  image = images.get(raw.get("image"), item_id)  # First: later rows may refer to this image.
  question = fields.text(raw, "question", "question")
  options = {k: str(raw[k]).strip() for k in string.ascii_uppercase if not fields.missing(raw.get(k))}
  if not options:
    raise BadRow("no options in columns A, B, C, D")
  answer = fields.option_letter(fields.text(raw, "answer", "ground truth"), "answer")
  if answer not in options:
    raise BadRow(f"ground truth {answer!r} in field 'answer' is not one of the options {', '.join(options)}")
  return EvalItem(
    suite=suite,
    id=item_id,
    question=_mcq_question(question, options),
    answers=[answer],
    image=image,
    source=f"{path}:{row}",
    category=fields.category(raw, "category"),
    extra={"index": raw.get("index"), "options": options, "cycle_category": raw.get("cycle_category")},
  )


def _read(suite: str, resolution: str, path: str, limit: int):
  expected = f"hr_bench_{resolution}.tsv (DreamMr/HR-Bench) or a .parquet with the same columns"
  file = rows.resolve_file(
    suite, path, (".tsv", ".parquet"), (f"hr_bench_{resolution}.tsv", f"*{resolution}*.parquet"), expected
  )
  other = "8k" if resolution == "4k" else "4k"
  if other in os.path.basename(file).lower():
    raise ValueError(f"{file}: this is HR-Bench {other.upper()}, but {suite} reads {expected}")
  raws = rows.table_rows(file, ("question", "answer", "image"), expected)
  to_item = functools.partial(_item, suite=suite, path=file, images=Base64Images(os.path.dirname(file)))
  return rows.read(suite, file, raws, to_item, limit, expected)


def read_4k(path: str, limit: int = 0):
  """HR-Bench 4K (4K crops of the 8K images; 4-way multiple choice in 4 option orders)."""
  return _read("hrbench4k", "4k", path, limit)


def read_8k(path: str, limit: int = 0):
  """HR-Bench 8K (8K images; 4-way multiple choice in 4 option orders)."""
  return _read("hrbench8k", "8k", path, limit)
