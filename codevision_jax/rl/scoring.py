"""Scoring trajectories: the policy's text, the operations its code performed, its correctness
(rule, then the judge), and the CodeVision reward per trajectory and group.

    scores, parts, stats = await score(trajectories, group_ids, tokenizer, judge=judge)

or, scoring each trajectory's answer as soon as it finishes (what `rl.rollouts` does):

    v = await verdict(traj, tokenizer, judge)            # per trajectory, the judge's calls concurrent
    scores, parts, stats = score_verdicts(trajectories, group_ids, verdicts)

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

import asyncio
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

  @classmethod
  def of(cls, verdicts: Sequence[Verdict]) -> ScoringStats:
    return cls(
      judged=sum(v.judged for v in verdicts),
      judge_yes=sum(v.from_judge for v in verdicts),
      judge_fallbacks=sum(v.judge_fallback for v in verdicts),
      judge_too_long=sum(v.judge_too_long for v in verdicts),
    )


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Whether one trajectory's answer is correct, and who decided: the rule, or the judge (asked
  only when the rule did not match and there is an answer and a ground truth)."""

  text: str  # the policy's text (`response_text`)
  correct: bool
  from_rule: bool = False
  from_judge: bool = False  # the judge said yes
  judged: bool = False  # the judge was asked
  judge_fallback: bool = False  # ... and gave no verdict: the rule's stands
  judge_too_long: bool = False  # ... because the answer was too long to send


async def verdict(traj: Trajectory, tokenizer, judge=None) -> Verdict:
  """The correctness of `traj`'s answer: the answer rule against each accepted answer, then
  `judge.verdict` (awaited; the judge bounds its own concurrency) when the rule did not match."""
  text = response_text(tokenizer, traj)
  truths = accepted_answers(traj.metadata.get("ground_truth"))
  prediction = reward.extract_answer(text)
  if any(reward.answers_match(prediction, t) for t in truths):
    return Verdict(text, True, from_rule=True)
  if not (truths and judge is not None and prediction):
    return Verdict(text, False)
  try:
    yes = bool(await judge.verdict(traj.metadata.get("question") or "", " or ".join(truths), prediction))
  except AnswerTooLong:
    return Verdict(text, False, judged=True, judge_fallback=True, judge_too_long=True)
  except JudgeUnavailable:
    return Verdict(text, False, judged=True, judge_fallback=True)
  return Verdict(text, yes, from_judge=yes, judged=True)


async def verdicts(trajectories: Sequence[Trajectory], tokenizer, judge=None) -> list[Verdict]:
  """`verdict` of every trajectory, all at once: the judge's calls run concurrently (up to its
  `max_concurrency`), not one after another."""
  return list(await asyncio.gather(*(verdict(t, tokenizer, judge) for t in trajectories)))


async def score(
  trajectories: Sequence[Trajectory],
  group_ids: Sequence[int],
  tokenizer,
  *,
  judge=None,
  weights: dict | None = None,
  tool_error_penalty: float = -0.05,
) -> tuple[np.ndarray, list[dict], ScoringStats]:
  """`score_verdicts` of the trajectories' `verdicts` (the judge's calls concurrent)."""
  return score_verdicts(
    trajectories,
    group_ids,
    await verdicts(trajectories, tokenizer, judge),
    weights=weights,
    tool_error_penalty=tool_error_penalty,
  )


def score_verdicts(
  trajectories: Sequence[Trajectory],
  group_ids: Sequence[int],
  verdicts: Sequence[Verdict],
  *,
  weights: dict | None = None,
  tool_error_penalty: float = -0.05,
) -> tuple[np.ndarray, list[dict], ScoringStats]:
  """Scores [N], the reward parts of each trajectory (`reward.tool_reward`'s keys plus
  "correct", "used_tool", "tool_errors", "r_tool_error", "score" and the provenance keys of the
  module docstring), and the judge's statistics; `verdicts[i]` is trajectory i's.

  The score is the tool reward's total plus `tool_error_penalty` per failed tool call (a call
  that was malformed, raised, timed out or was refused). A ground truth may list several
  accepted answers (any one matches). Trajectories with no ground truth score 0 with `correct`
  False. Everything but the group term (`r_necessity`) is a function of the trajectory alone.
  """
  if len(verdicts) != len(trajectories) or len(group_ids) != len(trajectories):
    raise ValueError(
      f"{len(trajectories)} trajectories, {len(verdicts)} verdicts and "
      f"{len(group_ids)} group ids: one of each per trajectory"
    )
  correct = [v.correct for v in verdicts]
  used = [len(t.tool_calls) > 0 for t in trajectories]
  group_ids = np.asarray(group_ids)
  necessity = np.zeros(len(trajectories))
  for g in np.unique(group_ids):
    members = np.flatnonzero(group_ids == g)
    necessity[members] = reward.necessity([used[i] for i in members], [correct[i] for i in members])
  parts = []
  for i, (traj, v) in enumerate(zip(trajectories, verdicts)):
    names, boxes = operations(traj)
    p = reward.tool_reward(
      correct=correct[i],
      fmt=reward.format_reward(v.text),
      ops=names,
      crop_boxes=boxes,
      code_calls=len(traj.tool_calls),
      required_transforms=traj.metadata.get("required_transforms"),
      gt_bbox=traj.metadata.get("target_box"),
      necessity=float(necessity[i]),
      weights=weights,
    )
    errors = sum(c.status != CallStatus.OK for c in traj.tool_calls)
    p.update(
      correct=float(correct[i]),
      used_tool=float(used[i]),
      tool_errors=float(errors),
      r_tool_error=tool_error_penalty * errors,
      from_rule=float(v.from_rule),
      from_judge=float(v.from_judge),
      judge_fallback=float(v.judge_fallback),
      evidence_calls=float(sum(c.result_image_index is not None for c in traj.tool_calls)),
      evidence_crop_boxes=float(len(boxes)),
    )
    p["score"] = p["total"] + p["r_tool_error"]
    parts.append(p)
  return (np.asarray([p["score"] for p in parts], np.float32), parts, ScoringStats.of(verdicts))
