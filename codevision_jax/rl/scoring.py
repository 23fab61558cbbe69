"""Scoring trajectories: the policy's text, the operations its code performed, its correctness
(rule, then the judge), and the CodeVision reward per trajectory and group.

    scores, parts, stats = await score(trajectories, group_ids, tokenizer, judge=judge)

What a trajectory did comes from the executor's runtime trace of each call (`execution.ops`),
not from reading its code: the core operations, the other operation names, and every crop box,
carried into the pixels of the conversation's first image through the result maps of the
calls that made the images it cropped (a crop of a rotated copy counts where it lands on the
original). A record's target box and required transforms refer to that first image.

The executor's `ops` and `result_maps` are what a call's returned pixels prove (executor/evidence.py
checks the child's claims in the worker); its `ops_claimed`, which the model's code could write,
is never read here. `EVIDENCE` names where each reward part comes from; every trajectory's parts
also carry the provenance of its own: `from_rule` / `from_judge` (which decided `correct`),
`judge_fallback` (the judge was asked but gave no verdict, or the answer was too long for it),
`evidence_calls` (tool calls that returned images, the only ones whose operations count) and
`evidence_crop_boxes` (crop boxes carried into the first image for r_mandatory's IoU).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from codevision_jax.execution import ops as ops_lib
from codevision_jax.rl import reward
from codevision_jax.rl.judge import AnswerTooLong, JudgeUnavailable
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


EVIDENCE = {
    "r_acc": "the answer rule on the policy's text, else the judge's verdict on the quoted answer",
    "fmt": "the policy's text (tool responses stripped)",
    "r_mandatory": "executor ops and result maps proven by returned pixels; the record's "
                   "required transforms and target box",
    "r_exact": "executor ops proven by returned pixels; required transforms",
    "r_emerge": "executor ops proven by returned pixels; correctness",
    "r_spurious": "executor ops proven by returned pixels; required transforms",
    "c_usage": "the agent loop's count of tool calls",
    "r_necessity": "correctness and tool use across the prompt's group",
    "r_tool_error": "the agent loop's call statuses",
}


@dataclasses.dataclass
class ScoringStats:
  judged: int = 0  # answers the rule did not match, sent to the judge
  judge_yes: int = 0
  judge_fallbacks: int = 0  # the judge gave no verdict: the rule's stands
  judge_too_long: int = 0  # of those, answers too long to send (the rule decided)


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
  correct, provenance = [], []
  for traj, text in zip(trajectories, texts):
    truths = accepted_answers(traj.metadata.get("ground_truth"))
    prediction = reward.extract_answer(text)
    ok = by_rule = any(reward.answers_match(prediction, t) for t in truths)
    by_judge = fallback = False
    if not ok and truths and judge is not None and prediction:
      stats.judged += 1
      try:
        ok = by_judge = await judge.verdict(traj.metadata.get("question") or "",
                                            " or ".join(truths), prediction)
        stats.judge_yes += ok
      except AnswerTooLong:
        stats.judge_fallbacks += 1
        stats.judge_too_long += 1
        fallback = True
      except JudgeUnavailable:
        stats.judge_fallbacks += 1
        fallback = True
    correct.append(bool(ok))
    provenance.append({"from_rule": float(by_rule), "from_judge": float(bool(by_judge)),
                       "judge_fallback": float(fallback)})
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
             r_tool_error=tool_error_penalty * errors, **provenance[i],
             evidence_calls=float(sum(c.result_image_index is not None for c in traj.tool_calls)),
             evidence_crop_boxes=float(len(boxes)))
    p["score"] = p["total"] + p["r_tool_error"]
    parts.append(p)
  return np.asarray([p["score"] for p in parts], np.float32), parts, stats
