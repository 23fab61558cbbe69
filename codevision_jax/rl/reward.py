"""CodeVision's reward: the answer rules, the format rule and the dense tool reward. Pure functions.

    answer = extract_answer(text)                         # last <answer>...</answer>, or a fallback
    correct = answers_match(answer, ground_truth)         # rule match (the judge decides the rest)
    parts = tool_reward(correct=correct, fmt=format_reward(text), ops={"rotate_270", "crop"},
                        crop_boxes=[[10, 10, 90, 60]], code_calls=2,
                        required_transforms=["rotate_90", "crop"], gt_bbox=[12, 8, 88, 64])
    parts["total"]

`text` is the policy's text of a trajectory; `<tool_response>` blocks are stripped first wherever
they appear. `ops` are the operation names a trajectory's code performed (the core ones, "crop",
"rotate_90", ..., and any others, as `execution.ops` reads them off the executor's trace); crop
boxes are in the pixels of the image the target box refers to. A required `rotate_D` means the
image was rotated by D, so the operation that undoes it, `rotate_{(360 - D) mod 360}`, is the one
required. The formulas and weights are those of the reference run (shared/CODEVISION.md):

    total = r_acc + w_fmt * fmt + alpha * r_mandatory + beta * r_necessity + r_exact + r_emerge
            - gamma * (c_usage + r_spurious)
"""

from __future__ import annotations

import fractions
import json
import numbers
import re
from typing import Any, Sequence

from codevision_jax.execution.ops import CORE_OPS

ORIENTATION_OPS = frozenset(CORE_OPS) - {"crop"}
DEFAULT_WEIGHTS = {"format": 0.1, "alpha": 1.0, "beta": 0.0, "gamma": 0.5, "emerge": 0.2}
EXACT_BONUS = 0.1
CROP_GATE = 0.1  # crop required and r_mandatory below this: r_acc is scaled by r_mandatory
MAX_FALLBACK_LINES = 500

_TOOL_RESPONSE = re.compile(r"<tool_response>.*?</tool_response>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_LETTER = re.compile(r"\b([A-D])\b")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_TAGS = re.compile(r"</?(?:think|answer|tool_call)>")


def strip_tool_responses(text: str) -> str:
  return _TOOL_RESPONSE.sub("", text)


# ---- the forms the arguments come in ------------------------------------------------------------
# CodeVision's records hold transforms as a list, one string, a dict keyed by transform or a
# JSON-encoded list, boxes as lists or JSON, ground truths as strings, numbers or lists of them.
# Each public function takes those forms with the reference's meaning and refuses anything else
# with a TypeError that names the argument and the forms it takes.

_NAMES_FORMS = (
  "None, a name such as 'rotate_90', a list/tuple/set of names, a dict keyed by name, or a JSON-encoded list of names"
)


def _names(value: Any, arg: str) -> list[str]:
  """Operation or transform names from any of `_NAMES_FORMS`."""
  if value is None:
    return []
  if isinstance(value, str):
    text = value.strip()
    if text.startswith("["):
      try:
        value = json.loads(text)
      except ValueError:
        raise TypeError(f"{arg}: {value!r} starts like a JSON list but does not parse; pass {_NAMES_FORMS}") from None
    else:
      return [text] if text else []
  elif isinstance(value, dict):
    value = list(value)
  elif hasattr(value, "tolist") and not isinstance(value, (bytes, bytearray)):
    value = value.tolist()  # a numpy array of names
  if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
    raise TypeError(f"{arg} must be {_NAMES_FORMS}; got {type(value).__name__} {value!r:.80}")
  return [v.strip() for v in value if v.strip()]


def _box(value: Any, arg: str) -> list[float] | None:
  """[x1, y1, x2, y2] from a list/tuple/array of 4 numbers or a JSON-encoded one; None stays."""
  if value is None:
    return None
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except ValueError:
      value = None
  elif hasattr(value, "tolist"):
    value = value.tolist()
  if (
    isinstance(value, (list, tuple))
    and len(value) == 4
    and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
  ):
    return [float(v) for v in value]
  raise TypeError(
    f"{arg} must be None or a box [x1, y1, x2, y2] of 4 numbers (a list, tuple, "
    f"numpy array or JSON-encoded list); got {value!r:.80}"
  )


def _boxes(value: Any, arg: str) -> list[list[float]]:
  """A list of boxes (or one box, or a JSON-encoded list of them)."""
  if value is None:
    return []
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except ValueError:
      raise TypeError(f"{arg}: {value!r:.80} is not a JSON-encoded list of boxes") from None
  elif hasattr(value, "tolist"):
    value = value.tolist()
  if (
    isinstance(value, (list, tuple))
    and len(value) == 4
    and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
  ):
    return [_box(value, arg)]  # one box
  if not isinstance(value, (list, tuple)):
    raise TypeError(
      f"{arg} must be a list of boxes [x1, y1, x2, y2] (or one box, or a JSON-encoded list); got {type(value).__name__}"
    )
  return [_box(b, f"{arg}[{i}]") for i, b in enumerate(value)]


def _text(value: Any, arg: str) -> str:
  if value is None:
    return ""
  if not isinstance(value, str):
    raise TypeError(f"{arg} must be the response text as a str (or None); got {type(value).__name__}")
  return value


def _scalar_answer(value: Any, arg: str) -> str:
  if isinstance(value, str):
    return value
  if hasattr(value, "item") and not isinstance(value, (list, tuple)):
    value = value.item()  # a numpy scalar
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return str(value)
  raise TypeError(
    f"{arg} must be a str or a number (a ground truth may also be a list of "
    f"them: any one matches); got {type(value).__name__} {value!r:.80}"
  )


def _flags(value: Any, arg: str) -> list[bool]:
  if hasattr(value, "tolist"):
    value = value.tolist()
  if not isinstance(value, (list, tuple)) or not all(
    isinstance(v, (bool, numbers.Integral)) and v in (0, 1) for v in value
  ):
    raise TypeError(f"{arg} must be a list/tuple/array of booleans (or 0/1), one per rollout; got {value!r:.80}")
  return [bool(v) for v in value]


# ---- the answer -------------------------------------------------------------------------------


def extract_answer(text: str) -> str | None:
  """The final answer: the last complete `<answer>...</answer>` (stripped); else the text after
  the last `<answer>` if one opens; else the last line when the text has fewer than 500 lines;
  None for empty text. Tool responses are stripped first. Of several `<answer>` blocks the last
  complete one counts; nested tags are read as the rule's non-greedy match reads them (from the
  first `<answer>` to the first `</answer>`)."""
  text = strip_tool_responses(_text(text, "text")).strip()
  if not text:
    return None
  answers = _ANSWER.findall(text)
  if answers:
    return answers[-1].strip()
  if "<answer>" in text:
    return text.rsplit("<answer>", 1)[1].strip()
  lines = text.split("\n")
  return lines[-1].strip() if len(lines) < MAX_FALLBACK_LINES else None


def _float(s: str) -> float | None:
  try:
    return float(s)
  except (TypeError, ValueError):
    return None


def _fraction(s: str) -> float | None:
  try:
    return float(fractions.Fraction(s.strip()))
  except (TypeError, ValueError, ZeroDivisionError):
    return None


def answers_match(prediction: str | float | None, ground_truth: Any) -> bool:
  """CodeVision's rule: equal as numbers, or (when either is not a number) as strings; otherwise
  a value extracted from the prediction (for an A-D ground truth, its last standalone letter A-D;
  else the prediction as a float when it parses, or its last number) equal to the ground truth
  case-insensitively or as fractions within 1e-4. No prediction, or nothing extracted: no match.

  `prediction` is a str, a number or None; `ground_truth` a str, a number, or a list/tuple of them
  (several accepted answers: any one matches)."""
  if prediction is None:
    return False
  if isinstance(ground_truth, (list, tuple)):
    truths = [_scalar_answer(t, f"ground_truth[{i}]") for i, t in enumerate(ground_truth)]
    return any(_match(_scalar_answer(prediction, "prediction"), t) for t in truths)
  return _match(_scalar_answer(prediction, "prediction"), _scalar_answer(ground_truth, "ground_truth"))


def _match(prediction: str, ground_truth: str) -> bool:
  pred, truth = prediction.strip(), ground_truth.strip()
  p, t = _float(pred), _float(truth)
  if p is not None and t is not None:
    if p == t:
      return True
  elif pred == truth:
    return True
  if truth.upper() in ("A", "B", "C", "D"):
    letters = _LETTER.findall(pred.upper())
    extracted = letters[-1] if letters else None
  elif p is not None:
    extracted = str(p)
  else:
    numbers = _NUMBER.findall(pred)
    extracted = numbers[-1] if numbers else None
  if extracted is None:
    return False
  if extracted.lower() == truth.lower():
    return True
  a, b = _fraction(extracted), _fraction(truth)
  return a is not None and b is not None and abs(a - b) <= 1e-4


# ---- the format ---------------------------------------------------------------------------------


def format_reward(text: str) -> float:
  """1.0 when the text (tool responses and surrounding space stripped) starts with `<think>`, has
  as many `<think>` as `</think>` (at least one), exactly one complete `<answer>...</answer>`
  which ends the text, and no think block that holds that answer's start or end while holding
  `<answer>` after its `<think>`; else 0.0. Beyond the reference's rule, a response that is
  nothing but tags (no reasoning and no answer text) or whose answer is empty earns 0: the format
  reward pays for the form of a reasoned answer, not for the tags alone."""
  text = strip_tool_responses(_text(text, "text")).strip()
  if not text.startswith("<think>"):
    return 0.0
  if not _TAGS.sub("", text).strip():
    return 0.0
  opens = text.count("<think>")
  if opens < 1 or opens != text.count("</think>"):
    return 0.0
  answers = list(_ANSWER.finditer(text))
  if len(answers) != 1 or answers[0].end() != len(text):
    return 0.0
  if not answers[0].group(1).strip():
    return 0.0
  start, end = answers[0].span()
  for block in _THINK.finditer(text):
    holds = block.start() <= start < block.end() or block.start() < end <= block.end()
    if holds and "<answer>" in block.group(0)[len("<think>") :]:
      return 0.0
  return 1.0


# ---- the tool reward -----------------------------------------------------------------------------


def required_ops(required_transforms: Any) -> set[str]:
  """The operations that undo the record's transforms: rotate_D -> rotate_{(360 - D) mod 360}
  (rotate_0 needs nothing), flips and crop as they are. `required_transforms` is None, one
  transform ("rotate_90"), a list/tuple/set of them, a dict keyed by transform, or a JSON-encoded
  list; anything else is a TypeError."""
  out = set()
  for t in _names(required_transforms, "required_transforms"):
    if t.startswith("rotate_"):
      try:
        degrees = (360 - int(t.split("_", 1)[1])) % 360
      except ValueError:
        raise ValueError(f"required_transforms: {t!r} is not rotate_<degrees>") from None
      if degrees:
        out.add(f"rotate_{degrees}")
    else:
      out.add(t)
  return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two [x1, y1, x2, y2] boxes (0 for empty boxes)."""
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def necessity(used_tool: Sequence[bool], correct: Sequence[bool]) -> list[float]:
  """r_necessity of each rollout of one prompt's group.

  acc_tool: correct tool-using / tool-using (0 without any); acc_no_tool: correct tool-free /
  tool-free (0 when there are none). The value max(0, acc_tool - acc_no_tool) goes to the correct,
  tool-using rollouts, when the group has some tool-free rollout and fewer than 2 of those were
  correct; every other rollout gets 0. Both arguments are lists/tuples/arrays of booleans (or
  0/1) of the same length.
  """
  used, right = _flags(used_tool, "used_tool"), _flags(correct, "correct")
  if len(used) != len(right):
    raise ValueError(
      f"used_tool has {len(used)} rollouts but correct has {len(right)}; give one flag per rollout of the group in each"
    )
  with_tool = [c for u, c in zip(used, right) if u]
  without = [c for u, c in zip(used, right) if not u]
  acc_tool = sum(with_tool) / len(with_tool) if with_tool else 0.0
  acc_no_tool = sum(without) / len(without) if without else 0.0
  value = max(0.0, acc_tool - acc_no_tool) if without else 0.0
  eligible = sum(without) < 2
  return [value if (u and c and eligible) else 0.0 for u, c in zip(used, right)]


def tool_reward(
  *,
  correct: bool,
  fmt: float,
  ops: Any,
  crop_boxes: Any,
  code_calls: int,
  required_transforms: Any,
  gt_bbox: Any,
  necessity: float = 0.0,
  weights: dict | None = None,
) -> dict:
  """The reward components of one trajectory and their weighted total (see the module docstring).

  Keys: r_acc, fmt, r_mandatory, r_necessity, r_exact, r_emerge, c_usage, r_spurious, total.
  `weights` override DEFAULT_WEIGHTS ("format", "alpha", "beta", "gamma", "emerge").
  `ops` and `required_transforms` take the forms of `required_ops`; `crop_boxes` is a list of
  [x1, y1, x2, y2] boxes (or one box, or JSON); `gt_bbox` one box (list, tuple, array or JSON) or
  None; `code_calls` an integer >= 0; `correct` a bool (or 0/1); `fmt` and `necessity` numbers.
  Other forms raise TypeError naming the argument.
  """
  correct, fmt, necessity, code_calls = (
    v.item() if hasattr(v, "item") and not isinstance(v, (list, tuple)) else v
    for v in (correct, fmt, necessity, code_calls)
  )  # numpy scalars as Python ones
  if not (isinstance(correct, (bool, numbers.Integral)) and correct in (0, 1)):
    raise TypeError(f"correct must be a bool (or 0/1); got {correct!r:.80}")
  for name, value in (("fmt", fmt), ("necessity", necessity)):
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
      raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r:.80}")
  if isinstance(code_calls, bool) or not isinstance(code_calls, numbers.Integral) or code_calls < 0:
    raise TypeError(f"code_calls must be the number of code calls, an integer >= 0; got {code_calls!r:.80}")
  correct, code_calls = bool(correct), int(code_calls)
  crop_boxes, gt_bbox = _boxes(crop_boxes, "crop_boxes"), _box(gt_bbox, "gt_bbox")
  w = {**DEFAULT_WEIGHTS, **(weights or {})}
  unknown = set(w) - set(DEFAULT_WEIGHTS)
  if unknown:
    raise ValueError(f"unknown reward weights {sorted(unknown)}; expected {sorted(DEFAULT_WEIGHTS)}")
  ops = set(_names(ops, "ops"))
  req = required_ops(required_transforms)
  used_core = ops & set(CORE_OPS)
  r_mandatory = 0.0
  if req:
    best_iou = 0.0
    if "crop" in req and "crop" in ops and gt_bbox is not None:
      best_iou = max((box_iou(b, gt_bbox) for b in crop_boxes), default=0.0)
    r_mandatory = min(1.0, (len((req - {"crop"}) & ops) + best_iou) / len(req))
  r_acc = 1.0 if correct else 0.0
  if "crop" in req and r_mandatory < CROP_GATE:
    r_acc *= r_mandatory
    necessity = 0.0
  req_core = req & set(CORE_OPS)
  r_exact = EXACT_BONUS if req_core and used_core == req_core else 0.0
  r_emerge = w["emerge"] if correct and ops - set(CORE_OPS) else 0.0
  c_usage = max(0, code_calls - max(2, len(req)))
  r_spurious = 0 if req & ORIENTATION_OPS else len(ops & ORIENTATION_OPS)
  total = (
    r_acc
    + w["format"] * fmt
    + w["alpha"] * r_mandatory
    + w["beta"] * necessity
    + r_exact
    + r_emerge
    - w["gamma"] * (c_usage + r_spurious)
  )
  return {
    "r_acc": r_acc,
    "fmt": float(fmt),
    "r_mandatory": r_mandatory,
    "r_necessity": necessity,
    "r_exact": r_exact,
    "r_emerge": r_emerge,
    "c_usage": float(c_usage),
    "r_spurious": float(r_spurious),
    "total": total,
  }
