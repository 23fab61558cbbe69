"""The end-of-run summaries: what an SFT run (`sft_text`, launch.sft) or an RL run (`rl_text`,
launch.rl) wrote where (`where_lines`, the same for both), and what an RL run did as launch.rl and
launch.demo print it (`rl_lines`): accuracy
beside reward (the reward also pays for tool use and format, so it can rise while answers get no
better), held-out accuracy when there was an evaluation, and the trajectories left out.

The figures come from `<workdir>/metrics.jsonl` (every round of the run, across resumes), or from
the rounds this process ran when that file is absent.
"""

from __future__ import annotations

import json
import os

from codevision_jax.runtime import layout
from launch import shell


def read_metrics(workdir: str, history: list | None = None) -> list[dict]:
  """The run's per-round metric lines (`metrics.jsonl`), else `history`; by round, the last line
  of a round winning (a resumed run may have written one twice)."""
  path = layout.metrics(workdir)
  lines = []
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      lines = [json.loads(l) for l in f if l.strip()]
  lines = lines or list(history or [])
  by_round = {}
  for line in lines:
    by_round[line.get("round")] = line
  return [by_round[r] for r in sorted(by_round, key=lambda r: (r is None, r))]


def first_last(lines: list[dict], key: str) -> tuple[tuple[int, float], tuple[int, float]] | None:
  """((round, value) of the first line with `key`, (round, value) of the last), or None."""
  have = [(l.get("round"), l[key]) for l in lines if l.get(key) is not None]
  return (have[0], have[-1]) if have else None


def _change(lines, key, fmt=".3f") -> str:
  fl = first_last(lines, key)
  if fl is None:
    return "-"
  (_, a), (_, b) = fl
  return f"{a:{fmt}} -> {b:{fmt}}" if len(lines) > 1 else f"{b:{fmt}}"


def verdict(lines: list[dict]) -> list[str]:
  """Plain statements of whether accuracy rose (held-out when evaluated, else on the rollouts),
  and whether the reward rose without it."""
  out = []
  for prefix, what in (("eval", "held-out accuracy"), ("rollout", "rollout accuracy")):
    acc = first_last(lines, f"{prefix}/accuracy")
    if acc is None or acc[0][0] == acc[1][0]:
      continue
    (r0, a0), (r1, a1) = acc
    if a1 > a0:
      out.append(f"{what} rose, {a0:.3f} (round {r0}) -> {a1:.3f} (round {r1})")
    else:
      out.append(f"{what} did NOT rise: {a0:.3f} (round {r0}) -> {a1:.3f} (round {r1})")
      reward = first_last(lines, f"{prefix}/reward/score")
      if reward and reward[1][1] > reward[0][1]:
        out.append(
          f"the {prefix} reward rose ({reward[0][1]:.3f} -> {reward[1][1]:.3f}) because it "
          "also pays for tool use and format (docs/reward.md): it is not accuracy"
        )
    break  # Held-out accuracy when there is one: it is what training is for.
  return out


def dropped(lines: list[dict]) -> list[str]:
  """The trajectories left out of training over the run, if any, and why."""
  total = sum(l.get("batch/dropped_trajectories", 0.0) for l in lines)
  if not total:
    return []
  why = {k: sum(l.get(f"batch/dropped_for_{k}", 0.0) for l in lines) for k in ("tokens", "patches", "images")}
  setting = {"tokens": "train.buckets", "patches": "train.patch_budget", "images": "train.max_images"}
  reasons = ", ".join(f"{int(n)} over {setting[k]}" for k, n in why.items() if n)
  trained = sum(l.get("batch/trained_trajectories", 0.0) for l in lines)
  return [
    f"dropped {int(total)} of {int(total + trained)} trajectories, not trained on: they "
    f"did not fit the microbatch geometry ({reasons or 'see the log'}; "
    "batch/dropped_* in metrics.jsonl)"
  ]


def rl_lines(workdir: str, history: list | None = None, indent: str = "   ") -> list[str]:
  """The summary lines of an RL run in `workdir`."""
  lines = read_metrics(workdir, history)
  trained = [l for l in lines if "rollout/accuracy" in l]
  out = []
  if trained:
    first, last = trained[0]["round"], trained[-1]["round"]
    span = f"round {first} -> {last}" if first != last else f"round {last}"
    out.append(
      f"rollouts, {span}: accuracy {_change(trained, 'rollout/accuracy')}, reward "
      f"{_change(trained, 'rollout/reward/score')}, tool calls per trajectory "
      f"{_change(trained, 'rollout/tool_calls_per_trajectory', '.2f')}"
    )
  evals = [l for l in lines if "eval/accuracy" in l]
  if evals:
    span = " -> ".join(dict.fromkeys(str(l["round"]) for l in (evals[0], evals[-1])))
    out.append(
      f"held-out eval, round {span}: accuracy {_change(evals, 'eval/accuracy')}, reward "
      f"{_change(evals, 'eval/reward/score')}"
    )
  out += verdict(lines) + dropped(lines)
  return [indent + l for l in out]


def dropped_line(dropped: dict | None) -> list[str]:
  """The summary's line on records left out (data.drop_oversized, data.skip_bad), if any."""
  if not dropped or not dropped["records"]:
    return []
  return [
    f"   dropped {dropped['records']:,} of {dropped['of']:,} records, not trained on: "
    f"{dropped['why']}; listed in {dropped['path']}"
  ]


def where_lines(workdir: str, *, rl: bool) -> list[str]:
  """Where a finished run's outputs are (`runtime.layout`) and the commands that read them, the
  same lines for SFT and RL (RL adds its metrics and sampled trajectories)."""
  tb = layout.tensorboard(workdir)
  lines = [f"   checkpoints: {layout.checkpoints(workdir)} (rerun the same command to resume)"]
  if rl:
    lines += [
      f"   metrics (a JSON line per round): {layout.metrics(workdir)}",
      f"   sampled trajectories: {layout.rollouts(workdir)}; read them in a browser after",
      f"     {shell.python_m('launch.view', f'--rollouts={workdir}')}",
    ]
  return lines + [
    f"   TensorBoard logs: {tb}; view them with",
    f"     {shell.tool('tensorboard')} --logdir {tb}",
    "   export the newest checkpoint as an HF model with",
    "     " + shell.python_m("launch.export", f"--workdir={workdir}", f"--out={layout.hf(workdir)}"),
  ]


def sft_text(workdir: str, last: dict, dropped: dict | None = None) -> str:
  """What a finished SFT run (launch.sft) wrote where, and the commands that come next (in forms a
  fresh shell runs: launch/shell.py). `last` and `dropped` are the run result's
  (`scaffold.RunResult`)."""
  lines = [f"== done: {workdir}"]
  if last:
    lines.append(f"   last logged step {last['step']}: loss {last['loss']:.4f}, {last['tokens_per_s']:,.0f} tokens/s")
  lines += dropped_line(dropped)
  return "\n".join(lines + where_lines(workdir, rl=False))


def rl_text(workdir: str, rounds: int, history: list | None = None) -> str:
  """What a finished RL run (launch.rl) did (`rl_lines`) and wrote where, and the commands that
  come next; `rounds` and `history` are the run result's (`scaffold.RunResult` steps, history)."""
  return "\n".join(
    [f"== done: {rounds} rounds in {workdir}", *rl_lines(workdir, history), *where_lines(workdir, rl=True)]
  )
