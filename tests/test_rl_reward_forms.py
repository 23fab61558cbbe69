"""The reward functions take every form CodeVision's data holds, with the reference's meaning, or
refuse with a TypeError naming the argument; degenerate answers score as the rules say."""

import json

import numpy as np
import pytest

from codevision_jax.rl import reward

BASE = dict(
  correct=True,
  fmt=1.0,
  ops={"rotate_270", "crop"},
  crop_boxes=[[10, 10, 90, 60]],
  code_calls=4,
  required_transforms=["rotate_90", "crop"],
  gt_bbox=[10, 10, 90, 60],
)


@pytest.mark.parametrize(
  "form",
  [
    ["rotate_90"],
    ("rotate_90",),
    {"rotate_90"},
    "rotate_90",
    " rotate_90 ",
    {"rotate_90": True},
    '["rotate_90"]',
    np.array(["rotate_90"]),
  ],
)
def test_required_ops_forms(form):
  assert reward.required_ops(form) == {"rotate_270"}


@pytest.mark.parametrize(
  "form,want",
  [
    (None, set()),
    ("", set()),
    ([], set()),
    ("[]", set()),
    ("rotate_0", set()),
    ("crop", {"crop"}),
    ('["crop", "rotate_180"]', {"crop", "rotate_180"}),
    ({"crop": [1, 2, 3, 4]}, {"crop"}),
  ],
)
def test_required_ops_values(form, want):
  assert reward.required_ops(form) == want


@pytest.mark.parametrize("form", [90, [90], ["rotate_90", 3], b"rotate_90", '["rotate_90"', 1.5])
def test_required_ops_refuses(form):
  with pytest.raises(TypeError, match="required_transforms"):
    reward.required_ops(form)


def test_tool_reward_single_transform_string_is_one_transform():
  """The issue's case: a string is one transform, not its characters."""
  p = reward.tool_reward(**{**BASE, "required_transforms": "rotate_90", "ops": ["rotate_270"], "crop_boxes": []})
  as_list = reward.tool_reward(
    **{**BASE, "required_transforms": ["rotate_90"], "ops": ["rotate_270"], "crop_boxes": []}
  )
  assert p == as_list
  assert p["c_usage"] == 2.0 and p["r_mandatory"] == 1.0


@pytest.mark.parametrize(
  "change",
  [
    {"ops": ["rotate_270", "crop"]},
    {"ops": '["rotate_270", "crop"]'},
    {"ops": {"rotate_270": 1, "crop": 1}},
    {"required_transforms": '["rotate_90", "crop"]'},
    {"required_transforms": {"rotate_90": None, "crop": None}},
    {"crop_boxes": [10, 10, 90, 60]},
    {"crop_boxes": json.dumps([[10, 10, 90, 60]])},
    {"crop_boxes": np.array([[10, 10, 90, 60]])},
    {"gt_bbox": (10, 10, 90, 60)},
    {"gt_bbox": "[10, 10, 90, 60]"},
    {"gt_bbox": np.array([10, 10, 90, 60])},
    {"code_calls": np.int64(4)},
    {"correct": 1},
    {"correct": np.bool_(True)},
    {"fmt": np.float32(1.0)},
  ],
)
def test_tool_reward_forms_mean_the_same(change):
  assert reward.tool_reward(**{**BASE, **change}) == reward.tool_reward(**BASE)


@pytest.mark.parametrize(
  "change,arg",
  [
    ({"ops": 3}, "ops"),
    ({"ops": [{"op": "crop"}]}, "ops"),
    ({"crop_boxes": [[1, 2, 3]]}, "crop_boxes"),
    ({"crop_boxes": "nonsense"}, "crop_boxes"),
    ({"gt_bbox": [1, 2]}, "gt_bbox"),
    ({"gt_bbox": "box"}, "gt_bbox"),
    ({"code_calls": 2.5}, "code_calls"),
    ({"code_calls": -1}, "code_calls"),
    ({"code_calls": True}, "code_calls"),
    ({"correct": "yes"}, "correct"),
    ({"fmt": "1"}, "fmt"),
    ({"necessity": None}, "necessity"),
    ({"required_transforms": 270}, "required_transforms"),
  ],
)
def test_tool_reward_refuses(change, arg):
  with pytest.raises(TypeError, match=arg):
    reward.tool_reward(**{**BASE, **change})


@pytest.mark.parametrize(
  "prediction,truth,want",
  [
    ("12", 12, True),
    ("12.0", 12, True),
    ("0.5", 0.5, True),
    ("0.50", 0.5, True),
    ("1/2", 0.5, False),  # the last number, 2, is read
    (12, "12", True),
    (12.0, "12", True),
    (np.float64(3.5), "3.5", True),
    ("12", np.int64(12), True),
    ("B", ["A", "B"], True),
    ("C", ("A", "B"), False),
    ("7", [7, "seven"], True),
    ("seven", [7, "seven"], True),
    (None, "12", False),
    ("13", 12, False),
  ],
)
def test_answers_match_forms(prediction, truth, want):
  assert reward.answers_match(prediction, truth) is want


@pytest.mark.parametrize(
  "prediction,truth,arg",
  [
    ("12", True, "ground_truth"),
    ("12", {"a": 1}, "ground_truth"),
    ("12", None, "ground_truth"),
    (["12"], "12", "prediction"),
    ("12", [b"12"], r"ground_truth\[0\]"),
    (True, "1", "prediction"),
  ],
)
def test_answers_match_refuses(prediction, truth, arg):
  with pytest.raises(TypeError, match=arg):
    reward.answers_match(prediction, truth)


@pytest.mark.parametrize("fn", [reward.extract_answer, reward.format_reward])
@pytest.mark.parametrize("text", [b"<answer>A</answer>", 3, ["<answer>A</answer>"]])
def test_text_functions_refuse_non_text(fn, text):
  with pytest.raises(TypeError, match="text"):
    fn(text)


def test_text_functions_take_none_as_empty():
  assert reward.extract_answer(None) is None and reward.format_reward(None) == 0.0


@pytest.mark.parametrize(
  "used,correct",
  [
    ([True, False], [True, False]),
    ((1, 0), (1, 0)),
    (np.array([True, False]), np.array([1, 0])),
  ],
)
def test_necessity_forms(used, correct):
  assert reward.necessity(used, correct) == [1.0, 0.0]


@pytest.mark.parametrize(
  "used,correct,error,arg",
  [
    (True, [True], TypeError, "used_tool"),
    ([True], "yes", TypeError, "correct"),
    ([True, 2], [1, 1], TypeError, "used_tool"),
    ([True], [True, False], ValueError, "used_tool"),
  ],
)
def test_necessity_refuses(used, correct, error, arg):
  with pytest.raises(error, match=arg):
    reward.necessity(used, correct)


# ---- degenerate answers: which block counts (CODEVISION.md: extraction takes the last complete
# <answer>...</answer>, tool responses stripped; the match rule then reads that text) ------------

T = "<think>reasoning</think>"


@pytest.mark.parametrize(
  "text,truth,answer,correct,fmt",
  [
    # every option listed: the rule reads the last standalone letter, D
    (T + "<answer>A B C D</answer>", "B", "A B C D", False, 1.0),
    (T + "<answer>A B C D</answer>", "D", "A B C D", True, 1.0),
    (T + "<answer>A, B, C or D</answer>", "A", "A, B, C or D", False, 1.0),
    # several blocks: the last complete one counts; the format needs exactly one
    (T + "<answer>B</answer><answer>C</answer>", "B", "C", False, 0.0),
    (T + "<answer>B</answer><answer>C</answer>", "C", "C", True, 0.0),
    # a block repeated inside the reasoning: the last complete one counts
    ("<think>maybe <answer>B</answer></think><answer>C</answer>", "C", "C", True, 0.0),
    # nested tags: the non-greedy match runs from the first <answer> to the first </answer>
    (T + "<answer><answer>B</answer></answer>", "B", "<answer>B", True, 0.0),
    (T + "<answer>A<answer>B</answer></answer>", "A", "A<answer>B", False, 0.0),
    # repeated answer tags around one value
    (T + "<answer><answer><answer>C", "C", "C", True, 0.0),
    # nothing but tags: empty answer, no format reward
    ("<think></think><answer></answer>", "A", "", False, 0.0),
    ("<think> </think>\n<answer> </answer>", "A", "", False, 0.0),
    (T + "<answer></answer>", "A", "", False, 0.0),
    ("<answer></answer>", "A", "", False, 0.0),
    # an unclosed block: the text after the last <answer>
    (T + "<answer>B", "B", "B", True, 0.0),
    # a block inside a tool response does not count
    (T + "<tool_response><answer>B</answer></tool_response><answer>C</answer>", "B", "C", False, 1.0),
    # the ordinary case, for contrast
    (T + "<answer>B</answer>", "B", "B", True, 1.0),
  ],
)
def test_degenerate_answers(text, truth, answer, correct, fmt):
  got = reward.extract_answer(text)
  assert got == answer
  assert reward.answers_match(got, truth) is correct
  assert reward.format_reward(text) == fmt
