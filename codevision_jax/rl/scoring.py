"""Scoring trajectories: the policy's text, the operations its code performed, its correctness
(rule, then the judge), and the CodeVision reward per trajectory and group.

    scores, parts, stats = await score(trajectories, group_ids, tokenizer, judge=judge)

What a trajectory did comes from the executor's runtime trace of each call (`execution.ops`),
not from reading its code: the core operations, the other operation names, and every crop box,
carried into the pixels of the conversation's first image through the result maps of the
calls that made the images it cropped (a crop of a rotated copy counts where it lands on the
original). A record's target box and required transforms refer to that first image.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from codevision_jax.execution import ops as ops_lib
from codevision_jax.rl import reward
from codevision_jax.rl.judge import JudgeUnavailable
from codevision_jax.sampling.trajectory import CallStatus, Trajectory


def response_text(tokenizer, traj: Trajectory) -> str:
  """The policy's turns as text: each run of sampled tokens decoded (special tokens dropped),
  the runs joined by newlines. Tool responses are not part of it."""
  ids, mask = np.asarray(traj.token_ids), np.asarray(traj.policy_mask, bool)
  edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
  runs = [ids[a:b].tolist() for a, b in zip(edges[::2], edges[1::2])]
  return "\n".join(tokenizer.decode(r, skip_special_tokens=True).strip() for r in runs)


def _map_box(box, affine) -> list[float]:
  a, b, c, d, e, f = affine
  corners = [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])]
  xs = [a * x + b * y + c for x, y in corners]
  ys = [d * x + e * y + f for x, y in corners]
  return [min(xs), min(ys), max(xs), max(ys)]


def first_image_box(traj: Trajectory, box, image: int) -> list[float] | None:
  """A box in the pixels of trajectory image `image`, in the pixels of image 0 (None when a step
  back to it is not known)."""
  made_by = {c.result_image_index: c for c in traj.tool_calls if c.result_image_index is not None}
  seen = set()
  while image != 0:
    call = made_by.get(image)
    if call is None or call.result_map is None or image in seen:
      return None
    seen.add(image)
    box, image = _map_box(box, call.result_map["map"]), call.result_map["source"]
  return list(box)


def operations(traj: Trajectory) -> tuple[set[str], list[list[float]]]:
  """The operation names the trajectory's code performed (core and other) and its crop boxes in
  the first image's pixels."""
  names, boxes = set(), []
  for call in traj.tool_calls:
    names |= ops_lib.core_ops(call.ops) | ops_lib.non_core_ops(call.ops)
    for op in call.ops:
      if isinstance(op, dict) and op.get("op") == "crop" and isinstance(op.get("source"), int):
        box = first_image_box(traj, op["box"], op["source"])
        if box is not None:
          boxes.append(box)
  return names, boxes


def accepted_answers(ground_truth) -> list[str]:
  """A record's ground truth as the list of answers that count as correct: one string, several
  (an eval item such as OCRBench's lists them), or none."""
  if ground_truth is None:
    return []
  if isinstance(ground_truth, (list, tuple)):
    return [str(t) for t in ground_truth]
  return [str(ground_truth)]


@dataclasses.dataclass
class ScoringStats:
  judged: int = 0  # answers the rule did not match, sent to the judge
  judge_yes: int = 0
  judge_fallbacks: int = 0  # the judge gave no verdict: the rule's stands


async def score(trajectories: Sequence[Trajectory], group_ids: Sequence[int], tokenizer, *,
                judge=None, weights: dict | None = None, tool_error_penalty: float = -0.05
                ) -> tuple[np.ndarray, list[dict], ScoringStats]:
  """Scores [N], the reward parts of each trajectory (`reward.tool_reward`'s keys plus
  "correct", "used_tool", "tool_errors", "r_tool_error", "score"), and the judge's statistics.

  The score is the tool reward's total plus `tool_error_penalty` per failed tool call (a call
  that was malformed, raised, timed out or was refused). A ground truth may list several
  accepted answers (any one matches). Trajectories with no ground truth score 0 with `correct`
  False.
  """
  stats = ScoringStats()
  texts = [response_text(tokenizer, t) for t in trajectories]
  correct = []
  for traj, text in zip(trajectories, texts):
    truths = accepted_answers(traj.metadata.get("ground_truth"))
    prediction = reward.extract_answer(text)
    ok = any(reward.answers_match(prediction, t) for t in truths)
    if not ok and truths and judge is not None and prediction:
      stats.judged += 1
      try:
        ok = await judge.verdict(traj.metadata.get("question") or "", " or ".join(truths),
                                 prediction)
        stats.judge_yes += ok
      except JudgeUnavailable:
        stats.judge_fallbacks += 1
    correct.append(bool(ok))
  used = [len(t.tool_calls) > 0 for t in trajectories]
  group_ids = np.asarray(group_ids)
  necessity = np.zeros(len(trajectories))
  for g in np.unique(group_ids):
    members = np.flatnonzero(group_ids == g)
    necessity[members] = reward.necessity([used[i] for i in members], [correct[i] for i in members])
  parts = []
  for i, (traj, text) in enumerate(zip(trajectories, texts)):
    names, boxes = operations(traj)
    p = reward.tool_reward(correct=correct[i], fmt=reward.format_reward(text), ops=names,
                           crop_boxes=boxes, code_calls=len(traj.tool_calls),
                           required_transforms=traj.metadata.get("required_transforms"),
                           gt_bbox=traj.metadata.get("target_box"), necessity=float(necessity[i]),
                           weights=weights)
    errors = sum(c.status != CallStatus.OK for c in traj.tool_calls)
    p.update(correct=float(correct[i]), used_tool=float(used[i]), tool_errors=float(errors),
             r_tool_error=tool_error_penalty * errors)
    p["score"] = p["total"] + p["r_tool_error"]
    parts.append(p)
  return np.asarray([p["score"] for p in parts], np.float32), parts, stats
