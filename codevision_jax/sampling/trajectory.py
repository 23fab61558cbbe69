"""The record of one agent trajectory, and its JSONL form (images saved beside the file).

save_jsonl(trajectories, "out/trajectories.jsonl")  # images go to out/images/<id>_<k>.png
trajectories = load_jsonl("out/trajectories.jsonl")
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from typing import Any, Iterable


class Finish(enum.StrEnum):
  """Why a trajectory ended."""

  ANSWER = "answer"  # a turn closed with <|im_end|> or eos after an <answer>
  EOS = "eos"  # a turn closed without one
  MAX_TURNS = "max_turns"  # a tool call in the last allowed assistant turn
  MAX_TOKENS = "max_tokens"  # the prompt + response token budget is spent
  ERROR = "error"  # the record cannot be used, or the executor cannot be reached


class CallStatus(enum.StrEnum):
  """What came of a tool call."""

  OK = "ok"
  PARSE_ERROR = "parse_error"  # malformed JSON, unknown tool, bad argument: never executed
  CODE_ERROR = "code_error"  # the code raised, timed out or returned no usable image
  LIMIT = "limit"  # refused: too many images, or a result too large for the context
  EXECUTOR_ERROR = "executor_error"  # the service could not be reached


@dataclasses.dataclass
class TrajectoryImage:
  """An image of the trajectory at full resolution (PNG bytes) and the grid the model saw."""

  png: bytes
  grid_thw: list  # [t, h, w] in patches, after resizing to the model's pixel budget
  source: str  # "input" or "tool"


@dataclasses.dataclass
class ToolCallRecord:
  """One `</tool_call>` of the policy and what came of it (`status`: a `CallStatus`)."""

  turn: int
  raw: str  # the text of the call block
  code: str | None = None
  description: str | None = None
  image_index: int | None = None
  status: CallStatus = CallStatus.OK
  error: str | None = None
  result_image_index: int | None = None
  stdout: str = ""
  ops: list = dataclasses.field(default_factory=list)
  # Where the result image came from: {"source": trajectory image index, "map": [a, b, c, d, e, f]}
  # from its pixels to that image's (ExecResult.result_maps), or None if not tracked.
  result_map: dict | None = None
  latency_s: float = 0.0


@dataclasses.dataclass
class Trajectory:
  """Tokens (prompt included) with the mask of the ones the policy sampled and their log-probs."""

  id: int
  origin: str = ""
  token_ids: list = dataclasses.field(default_factory=list)
  policy_mask: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  prompt_length: int = 0
  images: list = dataclasses.field(default_factory=list)  # TrajectoryImage
  tool_calls: list = dataclasses.field(default_factory=list)  # ToolCallRecord
  num_turns: int = 0
  finish_reason: Finish | None = None
  error: str | None = None
  timings: dict = dataclasses.field(default_factory=dict)  # seconds
  metadata: dict = dataclasses.field(default_factory=dict)  # ground truth etc. of the record

  def add(self, tokens, mask: int, logprobs=None) -> None:
    tokens = [int(t) for t in tokens]
    self.token_ids += tokens
    self.policy_mask += [mask] * len(tokens)
    self.logprobs += [0.0] * len(tokens) if logprobs is None else [float(x) for x in logprobs]

  @property
  def num_tool_errors(self) -> int:
    return sum(c.status != CallStatus.OK for c in self.tool_calls)

  def to_json(self, image_paths: list[str]) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["images"] = [
      {"path": p, "grid_thw": list(im.grid_thw), "source": im.source} for p, im in zip(image_paths, self.images)
    ]
    return out

  @classmethod
  def from_json(cls, obj: dict[str, Any], base_dir: str) -> "Trajectory":
    obj = dict(obj)
    images = []
    for im in obj.pop("images"):
      with open(os.path.join(base_dir, im["path"]), "rb") as f:
        images.append(TrajectoryImage(f.read(), list(im["grid_thw"]), im["source"]))
    calls = [ToolCallRecord(**{**c, "status": CallStatus(c["status"])}) for c in obj.pop("tool_calls")]
    finish = obj.pop("finish_reason")
    return cls(images=images, tool_calls=calls, finish_reason=Finish(finish) if finish else None, **obj)


def save_jsonl(trajectories: Iterable[Trajectory], path: str, *, append: bool = False) -> None:
  """One JSON line per trajectory; images as PNG files under `images/` next to `path`."""
  base = os.path.dirname(os.path.abspath(path))
  os.makedirs(os.path.join(base, "images"), exist_ok=True)
  with open(path, "a" if append else "w", encoding="utf-8") as f:
    for t in trajectories:
      paths = []
      for k, im in enumerate(t.images):
        rel = os.path.join("images", f"{t.id}_{k}.png")
        with open(os.path.join(base, rel), "wb") as g:
          g.write(im.png)
        paths.append(rel)
      f.write(json.dumps(t.to_json(paths), ensure_ascii=False) + "\n")


def load_jsonl(path: str) -> list[Trajectory]:
  base = os.path.dirname(os.path.abspath(path))
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f):
      if line.strip():
        try:
          out.append(Trajectory.from_json(json.loads(line), base))
        except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError.
          raise ValueError(f"{path}:{i + 1}: not a trajectory record ({e})") from e
  return out
