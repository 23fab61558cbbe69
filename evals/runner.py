"""Running an eval: every item asked upright and under each transform, with and without the tool.

    cases = make_cases(items, transforms=TRANSFORMS, tools=("on", "off"))
    stats = await run_cases(cases, out, policy=..., tokenizer=..., client=..., settings=...,
                            agent=AgentConfig(...), judge=None)

A case is one (item, transform, tools) triple with a stable key
`<suite>/<item>/<transform>/<tools>`.
Its record is the item's image under the transform (`processing.orientation`: the target box moves
with it, and the transform joins the item's required transforms, so the process reward reads it
as a training task's) and the question as one user turn. With the tool ("on") the agent loop runs
as in training (the system prompt and tool schema when `agent.system_prompt`, up to
`agent.max_turns` turns, calls executed); without it ("off") the model gets the question alone
and one turn, as the paper's baselines: a tool call it writes anyway is not run and ends the
trajectory (`max_turns`).

Cases run in chunks through the rollout service (`rl.rollouts.rollout`: the agent loop, then the
RL reward's answer rule, judge and reward parts, each answer judged as its trajectory finishes: an
eval scores exactly as training rewards). Each scored case is appended to `<out>/results.jsonl`
(its transcript, `rl.transcript`, plus the case's fields and `response_tokens`) with its images
under `<out>/images/`; a rerun skips the keys already there, so an interrupted eval resumes where
it stopped. A case whose executor could not be reached is not written (the rerun retries it; its
answer may have been judged, and counts in `judged`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Callable, Sequence

from codevision_jax.data import records as records_lib
from codevision_jax.processing import code_tool, orientation
from codevision_jax.rl import rollouts, transcript
from codevision_jax.sampling.environment import AgentConfig
from codevision_jax.sampling.trajectory import CallStatus, Trajectory
from evals.suites import EvalItem

log = logging.getLogger(__name__)

TOOL_MODES = ("on", "off")
RESULTS = "results.jsonl"
_ORIENTATION_OPS = {t for t in orientation.TRANSFORMS if t != "none"}


@dataclasses.dataclass(frozen=True)
class Case:
  """One item asked under one transform, with the tool on or off."""

  item: EvalItem
  transform: str
  tools: str

  @property
  def key(self) -> str:
    return f"{self.item.suite}/{self.item.id}/{self.transform}/{self.tools}"


def make_cases(items: Sequence[EvalItem], transforms: Sequence[str], tools: Sequence[str]) -> list[Case]:
  """Every (item, transform, tools) triple, tools modes outermost (each mode runs as a block).

  An item whose published required transforms already include an orientation change (an
  MVToolBench row) is only asked as published ("none"): composing transforms would make its
  required set ambiguous."""
  bad = [t for t in transforms if t not in orientation.TRANSFORMS]
  if bad:
    raise ValueError(f"unknown transform(s) {bad}; choose from {list(orientation.TRANSFORMS)}")
  bad = [t for t in tools if t not in TOOL_MODES]
  if bad:
    raise ValueError(f"unknown tools mode(s) {bad}; choose from {list(TOOL_MODES)}")
  return [
    Case(item, t, mode)
    for mode in tools
    for item in items
    for t in transforms
    if t == "none" or not _ORIENTATION_OPS & set(item.required_transforms)
  ]


def case_record(case: Case) -> records_lib.Conversation:
  """The conversation record of a case: the item's image under its transform, the question."""
  item, t = case.item, case.transform
  image = records_lib.load_image(item.image)
  box = None if item.target_box is None else orientation.transform_box(item.target_box, t, image.size)
  answers = list(item.answers)
  return records_lib.Conversation(
    messages=[{"role": "user", "content": f"{code_tool.IMAGE_PLACEHOLDER}\n{item.question}"}],
    images=[records_lib.png_bytes(orientation.apply_transform(image, t))],
    ground_truth=answers[0] if len(answers) == 1 else answers,
    required_transforms=list(item.required_transforms) + ([t] if t != "none" else []),
    target_box=box,
    question=item.question,
    answer=answers[0],
    data_source=item.suite,
    origin=f"{item.source} ({t}, tools {case.tools})",
  )


def agent_config(tools: str, agent: AgentConfig) -> AgentConfig:
  """The agent limits of a tools mode: `agent` itself with the tool, one turn and no system
  prompt or schema without it."""
  return agent if tools == "on" else dataclasses.replace(agent, max_turns=1, system_prompt=False)


def file_name(key: str) -> str:
  """A key as a file-name stem."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def load_results(out: str) -> dict[str, dict]:
  """{key: result} of the cases already scored in `<out>/results.jsonl`. A torn last line (a run
  killed while writing it) is dropped from the file, so appending continues cleanly."""
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    return {}
  done, lines, torn = {}, [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        result = json.loads(line)
        done[result["key"]] = result
        lines.append(line if line.endswith("\n") else line + "\n")
      except (json.JSONDecodeError, KeyError, TypeError):
        torn += 1
  if torn:
    log.warning("%s: dropped %d unreadable line(s) (an interrupted write); those cases run again", path, torn)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(lines)
    os.replace(path + ".tmp", path)
  return done


def _result(tokenizer, case: Case, traj: Trajectory, parts: dict) -> dict:
  name = file_name(case.key)
  record = transcript.transcript(tokenizer, traj, parts, image_name=name)
  record.update(
    key=case.key,
    suite=case.item.suite,
    item=case.item.id,
    transform=case.transform,
    tools=case.tools,
    category=case.item.category,
    source=case.item.source,
    response_tokens=int(sum(traj.policy_mask)),
  )
  return record


def _write_images(out: str, case: Case, traj: Trajectory) -> None:
  for k, image in enumerate(traj.images):
    with open(os.path.join(out, transcript.image_path(traj, k, file_name(case.key))), "wb") as f:
      f.write(image.png)


def _executor_failed(traj: Trajectory) -> bool:
  return any(c.status == CallStatus.EXECUTOR_ERROR for c in traj.tool_calls)


@dataclasses.dataclass
class RunStats:
  scored: int = 0
  skipped: int = 0  # already in results.jsonl
  executor_failures: int = 0  # not scored: the executor could not be reached
  judged: int = 0
  judge_fallbacks: int = 0


async def run_cases(
  cases: Sequence[Case],
  out: str,
  *,
  policy,
  tokenizer,
  client,
  settings,
  agent: AgentConfig,
  judge=None,
  chunk: int = 64,
  on_scored: Callable[[int], None] | None = None,
) -> RunStats:
  """Runs and scores the cases not yet in `<out>/results.jsonl`, appending each chunk's results
  as soon as it is scored; `on_scored(n)` after each chunk (progress). Each case is its own group
  for the reward's group term (the reward weights are the defaults)."""
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  done = load_results(out)
  stats = RunStats(skipped=sum(c.key in done for c in cases))
  todo = [c for c in cases if c.key not in done]
  for mode in TOOL_MODES:
    block = [c for c in todo if c.tools == mode]
    for start in range(0, len(block), chunk):
      part = block[start : start + chunk]
      ro = await rollouts.rollout(
        policy,
        [case_record(c) for c in part],
        tokenizer=tokenizer,
        client=client,
        settings=settings,
        agent=agent_config(mode, agent),
        judge=judge,
      )
      keep = [(c, t, p) for c, t, p in zip(part, ro.trajectories, ro.parts) if not _executor_failed(t)]
      stats.executor_failures += len(part) - len(keep)
      stats.judged += ro.scoring_stats.judged
      stats.judge_fallbacks += ro.scoring_stats.judge_fallbacks
      with open(os.path.join(out, RESULTS), "a", encoding="utf-8") as f:
        for case, traj, p in keep:
          _write_images(out, case, traj)
          f.write(json.dumps(_result(tokenizer, case, traj, p), ensure_ascii=False) + "\n")
      stats.scored += len(keep)
      if on_scored:
        on_scored(len(part))
  return stats
