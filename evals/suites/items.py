"""What a suite reader returns: an `EvalItem` per usable row, a `BadItem` per row that is not."""

from __future__ import annotations

import dataclasses


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


class BadRow(ValueError):
  """A row that cannot become an item; the message is the BadItem's reason."""
