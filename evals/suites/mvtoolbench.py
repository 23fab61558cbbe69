"""MVToolBench (each image rotated or flipped; the question needs a small text region).

Published as verl RL rows (prompt, images, reward_model.ground_truth, extra_info with
required_transforms and gt_bbox) in a `.parquet` (or `.jsonl` / `.json`), read by
`codevision_jax.data.readers`. `record_item` makes an item of any such normalised record (the
TFDS sets of `evals.suites.tfds` too).
"""

from __future__ import annotations

import functools
import os

from codevision_jax.data import readers
from codevision_jax.processing import code_tool
from evals.suites import fields, rows
from evals.suites.items import BadRow, EvalItem

NAME = "mvtoolbench"
EXPECTED = "verl RL rows (prompt, images, reward_model.ground_truth, extra_info) in a .parquet, .jsonl or .json"


def record_item(conv, row: int, *, suite: str, source: str) -> EvalItem:
  """A normalised RL record (`records.Conversation`, verl fields) -> an item of `suite`."""
  texts = (m["content"].replace(code_tool.IMAGE_PLACEHOLDER, "").strip() for m in conv.messages if m["role"] == "user")
  question = "\n".join(t for t in texts if t)
  if not question:
    raise BadRow("no question: the user prompt in field 'prompt' has no text")
  truth = conv.ground_truth if not fields.missing(conv.ground_truth) else conv.answer
  if fields.missing(truth):
    raise BadRow("no ground truth in field 'reward_model.ground_truth' (nor extra_info.answer)")
  if len(conv.images) != 1:
    raise BadRow(f"{len(conv.images)} images in field 'images'; an eval item takes exactly one")
  box = conv.target_box or None
  if box is not None and len(box) != 4:
    raise BadRow(f"target box {box} (extra_info.gt_bbox / bbox) must be [x1, y1, x2, y2]")
  transforms = list(conv.required_transforms or [])
  extra = dict(conv.extra, data_source=conv.data_source)
  category = fields.category(conv.extra, "category", "type") or "+".join(transforms)
  return EvalItem(
    suite=suite,
    id=fields.item_id(conv.extra, "index", row),
    question=question,
    answers=[str(truth).strip()],
    image=conv.images[0],
    source=source,
    required_transforms=transforms,
    target_box=box,
    category=category,
    extra=extra,
  )


def _item(raw, row: int, *, path: str) -> EvalItem:
  conv = readers.normalise_record(raw, os.path.dirname(path), require_assistant=False)
  return record_item(conv, row, suite=NAME, source=f"{path}:{row}")


def read(path: str, limit: int = 0):
  """MVToolBench (each image rotated or flipped; the question needs a small text region)."""
  file = rows.resolve_file(NAME, path, (".parquet", ".jsonl", ".json"), ("*.parquet",), EXPECTED)
  to_item = functools.partial(_item, path=file)
  return rows.read(NAME, file, readers.load_raw(file), to_item, limit, EXPECTED)
