"""Synthetic orientation-and-detail tasks: determinism, geometry, and correct expert code."""

import math
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from codevision_jax.data import records, synthetic
from codevision_jax.processing import code_tool, orientation

N = 36


@pytest.fixture(scope="module")
def recs():
  return synthetic.generate(N, seed=11)


def _array(source):
  return np.asarray(records.load_image(source))


def _same(a, b):
  return a.messages == b.messages and a.images == b.images and a.target_box == b.target_box


def test_deterministic_and_indexed_by_seed_and_position(recs):
  again = synthetic.generate(N, seed=11)
  assert all(_same(a, b) for a, b in zip(recs, again))
  assert _same(synthetic.generate(5, seed=11)[4], recs[4])  # Record i does not depend on n.
  other = synthetic.generate(5, seed=12)
  assert not all(_same(a, b) for a, b in zip(recs, other))


def test_covers_every_transform_kind_and_case(recs):
  assert {r.extra["transform"] for r in recs} == set(synthetic.TRANSFORMS)
  assert {r.extra["content"] for r in recs} == set(synthetic.KINDS)
  assert any("crop" in r.required_transforms for r in recs)
  assert any(r.required_transforms == [] for r in recs)  # The no-tool case.
  num_calls = {sum(1 for m in r.messages if m.get("tool_calls")) for r in recs}
  assert num_calls == {0, 1, 2}
  for r in recs:
    assert 224 <= max(r.extra["image_size"]) <= 896  # Modest sizes keep tests fast.


@pytest.mark.parametrize("transform", synthetic.TRANSFORMS)
def test_transform_box_and_inverse(transform):
  w, h = 40, 24
  box = [5, 3, 17, 11]
  mask = np.zeros((h, w), dtype=np.uint8)
  mask[box[1] : box[3], box[0] : box[2]] = 255
  moved = np.asarray(orientation.apply_transform(Image.fromarray(mask), transform))
  ys, xs = np.nonzero(moved)
  assert orientation.transform_box(box, transform, (w, h)) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
  image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
  inverse = orientation.inverse_transform(transform)
  restored = orientation.apply_transform(orientation.apply_transform(image, transform), inverse)
  np.testing.assert_array_equal(np.asarray(restored), np.asarray(image))
  if transform.startswith("rotate_"):
    degrees = int(transform.split("_")[1])
    assert inverse == f"rotate_{(360 - degrees) % 360}"


def _run_code(code, image):
  """Runs expert code the way the executor will: the image as `image`/`img`, result in `result`."""
  scope = {"image": image, "img": image, "np": np, "cv2": cv2, "math": math}
  exec(code, scope)  # pylint: disable=exec-used
  return scope.get("result", scope.get("output"))


def test_expert_code_undoes_transform_and_crops_the_content(recs):
  for r in recs:
    images = [records.load_image(s) for s in r.images]
    given = images[0]
    assert list(given.size) == r.extra["image_size"]
    # The upright content crop, computed independently of the trajectory: crop the target box of
    # the given image, then undo each required orientation transform.
    expected = given.crop(tuple(r.target_box))
    for t in r.required_transforms:
      if t != "crop":
        expected = orientation.apply_transform(expected, orientation.inverse_transform(t))
    upright = orientation.apply_transform(given, orientation.inverse_transform(r.extra["transform"]))
    np.testing.assert_array_equal(np.asarray(upright.crop(tuple(r.extra["upright_box"]))), np.asarray(expected))
    calls = []
    for k, m in enumerate(r.messages):
      for c in m.get("tool_calls") or []:
        call = code_tool.parse_tool_call(
          code_tool.format_tool_call(c["name"], c["arguments"]), num_images=1 + len(calls)
        )
        assert isinstance(call, code_tool.ToolCall), call
        calls.append(call)
        out = _run_code(call.code, images[call.image_index])
        np.testing.assert_array_equal(np.asarray(out), np.asarray(images[len(calls)]))
        assert r.messages[k + 1] == {"role": "tool", "content": code_tool.tool_response_content(len(calls))}
    assert len(images) == 1 + len(calls)
    final = images[-1]
    if r.required_transforms:
      np.testing.assert_array_equal(np.asarray(final), np.asarray(expected))
    else:
      assert r.target_box == [0, 0, given.width, given.height]


def test_metadata_and_answer_format(recs):
  for r in recs:
    t = r.extra["transform"]
    orientation = [] if t == "none" else [t]
    assert r.required_transforms in (orientation, ["crop"] + orientation)
    x1, y1, x2, y2 = r.target_box
    w, h = r.extra["image_size"]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    if "crop" in r.required_transforms:
      assert (x2 - x1) * (y2 - y1) < 0.2 * w * h
    assert r.ground_truth == r.answer and r.data_source == synthetic.DATA_SOURCE
    assert r.tools == [code_tool.CODE_IMAGE_TOOL] and r.messages[0]["content"] == code_tool.SYSTEM_PROMPT
    assert r.num_placeholders() == len(r.images)
    assistant = [m for m in r.messages if m["role"] == "assistant"]
    for m in assistant:
      assert m["content"].startswith("<think>") and m["content"].count("</think>") == 1
    last = assistant[-1]["content"]
    assert re.fullmatch(r"<think>.*</think>\n<answer>(.*)</answer>", last, re.DOTALL).group(1) == r.answer
