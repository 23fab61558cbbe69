"""A trajectory as a reader wants it: the decoded text of every turn, each tool call's code and
what came of it, the final answer and, where the record has ground truth, its correctness and
reward parts.

    record = transcript(tokenizer, traj, parts=parts)   # parts: one of rl.scoring.score's
    json.dumps(record)

`turns` splits the tokens after the prompt into runs the policy sampled ("assistant") and runs it
did not ("tool": the tool response the loop appended, chat framing included). Image tokens show
as `<image>`; the chat's frame tokens are dropped. A call's `ops` are the operations the reward
reads from the executor's trace: core ones (`rotate_270`, `crop`, ...) and the names of others.
"""

from __future__ import annotations

import os
import re

import numpy as np

from codevision_jax.execution import ops as ops_lib
from codevision_jax.rl import reward, scoring
from codevision_jax.sampling.trajectory import Trajectory

_IMAGE = re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>)*<\|vision_end\|>")
_FRAME = re.compile(r"<\|im_start\|>(?:system|user|assistant|tool)?\n?|<\|im_end\|>\n?|<\|endoftext\|>")


def _text(tokenizer, ids) -> str:
  text = tokenizer.decode(list(ids), skip_special_tokens=False)
  return _FRAME.sub("", _IMAGE.sub("<image>", text)).strip()


def turns(tokenizer, traj: Trajectory) -> list[dict]:
  """[{"role": "assistant" | "tool", "text"}] in order, from the end of the prompt."""
  ids = np.asarray(traj.token_ids[traj.prompt_length :])
  mask = np.asarray(traj.policy_mask[traj.prompt_length :], bool)
  if ids.size == 0:
    return []
  edges = np.r_[0, np.flatnonzero(np.diff(mask.astype(np.int8))) + 1, ids.size]
  return [
    {"role": "assistant" if mask[a] else "tool", "text": _text(tokenizer, ids[a:b])}
    for a, b in zip(edges[:-1], edges[1:])
  ]


def image_path(traj: Trajectory, index: int | None, name: str | None = None) -> str | None:
  """Where image `index` of `traj` is written, relative to its transcript's file:
  `images/<name>_<index>.png`, `name` by default the trajectory's id (as `trajectory.save_jsonl`
  writes them)."""
  if index is None:
    return None
  return os.path.join("images", f"{traj.id if name is None else name}_{index}.png")


def transcript(tokenizer, traj: Trajectory, parts: dict | None = None, *, image_name: str | None = None) -> dict:
  """The readable record of `traj`. `parts` (its reward parts from `rl.scoring.score`) give
  `correct` and `reward` when the record has ground truth; both are None otherwise. Image paths
  are `image_path(traj, k, image_name)`."""
  truth = traj.metadata.get("ground_truth")
  graded = truth is not None and parts is not None
  return {
    "id": traj.id,
    "origin": traj.origin,
    "question": traj.metadata.get("question"),
    "ground_truth": truth,
    "answer": reward.extract_answer(scoring.response_text(tokenizer, traj)),
    "correct": bool(parts["correct"]) if graded else None,
    "reward": {k: float(v) for k, v in parts.items()} if graded else None,
    "finish_reason": traj.finish_reason,
    "error": traj.error,
    "num_turns": traj.num_turns,
    "turns": turns(tokenizer, traj),
    "tool_calls": [
      {
        "turn": c.turn,
        "description": c.description,
        "image_index": c.image_index,
        "code": c.code,
        "status": c.status,
        "stdout": c.stdout,
        "error": c.error,
        "result_image": image_path(traj, c.result_image_index, image_name),
        "ops": sorted(ops_lib.core_ops(c.ops) | ops_lib.non_core_ops(c.ops)),
        "latency_s": round(c.latency_s, 4),
      }
      for c in traj.tool_calls
    ],
    "images": [image_path(traj, k, image_name) for k in range(len(traj.images))],
  }
