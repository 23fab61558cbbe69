"""Field values of published rows: text, lists of answers, ids, categories, option letters.

Each helper raises `BadRow` naming the field when the value is missing or of the wrong kind.
"""

from __future__ import annotations

import ast
import math
import string

from evals.suites.items import BadRow


def missing(value) -> bool:
  """None, NaN, or blank text: what published files use for "no value"."""
  if value is None:
    return True
  if isinstance(value, float):
    return math.isnan(value)
  return isinstance(value, str) and not value.strip()


def text(raw: dict, field: str, what: str) -> str:
  """The field's value as stripped text; `what` names it in the error ("question")."""
  value = raw.get(field)
  if missing(value):
    raise BadRow(f"no {what} in field {field!r}")
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise BadRow(f"field {field!r} must be text, got {type(value).__name__}")
  return str(value).strip()


def text_list(value, field: str, what: str) -> list[str]:
  """A list-of-text field (a single text counts as a list of one); its last entry must be set."""
  values = [value] if isinstance(value, str) else value
  if not isinstance(values, (list, tuple)) or not values or missing(values[-1]):
    raise BadRow(f"no {what} in field {field!r}")
  return [str(v).strip() for v in values]


def answers(value, field: str) -> list[str]:
  """Accepted answers from a list, a Python-list string (VLMEvalKit TSVs) or a plain text."""
  if isinstance(value, str) and value.strip().startswith("["):
    try:
      parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      parsed = value
    value = parsed if isinstance(parsed, (list, tuple)) else value
  values = value if isinstance(value, (list, tuple)) else [value]
  accepted = [str(v).strip() for v in values if not missing(v)]
  if not accepted:
    raise BadRow(f"no ground truth in field {field!r}")
  return accepted


def item_id(raw: dict, field: str, row: int) -> str:
  """The published id in `field`, else the row number."""
  value = raw.get(field)
  return str(row) if missing(value) else str(value).strip()


def category(raw: dict, *fields: str) -> str:
  """The first of `fields` that is set, as text; "" when none is."""
  for field in fields:
    if not missing(raw.get(field)):
      return str(raw[field]).strip()
  return ""


def option_letter(value: str, field: str) -> str:
  """A multiple-choice ground truth as an upper-case option letter."""
  letter = value.strip().upper()
  if len(letter) != 1 or letter not in string.ascii_uppercase:
    raise BadRow(f"ground truth {value!r} in field {field!r} is not an option letter (A, B, ...)")
  return letter
