"""The eval report: `report.json`, `report.md` and `report.html` from the scored cases.

    report = write_report(out, results, meta={...}, bad_items=[...])

`results` are the lines of `<out>/results.jsonl` (`evals.runner`). Per suite and tools mode,
per transform and over all: the rollout summary (`rl.rollouts.summarize`, the names RL's
metrics.jsonl and launch.rollout's summary.json use: accuracy, trajectories, reward parts,
tool_calls_per_trajectory, tool_use_rate, ops (what the executor saw the code do),
tool_error_rate, turns, finish, ...); and the mean accuracy over the transforms asked (the paper's
orientation-robustness average when all six are). `report.md` puts the tables beside the
published numbers (`evals.published`, labelled as such); `report.html` adds the plots
(matplotlib) and the trajectory viewer (`evals.viewer`).
"""

from __future__ import annotations

import collections
import io
import json
import os
from typing import Sequence

from codevision_jax.processing import orientation
from codevision_jax.rl import rollouts
from evals import viewer
from evals.published import PUBLISHED

_MODE_LABEL = {"on": "with the code tool", "off": "without tools"}


def _mean(xs):
  xs = list(xs)
  return sum(xs) / len(xs) if xs else None


def metrics(results: Sequence[dict]) -> dict:
  """The rollout summary (`rl.rollouts.summarize`) of a set of scored cases."""
  return rollouts.summarize([rollouts.Outcome.of_record(r) for r in results])


def aggregate(results: Sequence[dict]) -> dict:
  """{suite: {tools mode: {"by_transform": {transform: metrics}, "all": metrics,
  "average_accuracy"}}}, transforms in `orientation.TRANSFORMS` order."""
  out = {}
  for suite in sorted({r["suite"] for r in results}):
    out[suite] = {}
    for mode in ("on", "off"):
      rs = [r for r in results if r["suite"] == suite and r["tools"] == mode]
      if not rs:
        continue
      by = {
        t: metrics([r for r in rs if r["transform"] == t])
        for t in orientation.TRANSFORMS
        if any(r["transform"] == t for r in rs)
      }
      out[suite][mode] = {
        "by_transform": by,
        "all": metrics(rs),
        "average_accuracy": _mean(m["accuracy"] for m in by.values()),
      }
  return out


def _pct(x):
  return None if x is None else round(100 * x, 1)


def suite_table(suite: str, modes: dict) -> tuple[str, list[str], list[list]]:
  """(heading, header, rows) of one suite: accuracy (%) per transform with and without tools,
  and the tool statistics of the run with it."""
  on, off = modes.get("on"), modes.get("off")
  transforms = list((on or off)["by_transform"])
  header = [
    "transform",
    "accuracy % (tools on)",
    "accuracy % (tools off)",
    "n",
    "tool calls / trajectory",
    "trajectories with calls %",
    "tool error rate %",
    "mean turns",
  ]
  rows = []
  for t in transforms:
    m_on = on["by_transform"].get(t) if on else None
    m_off = off["by_transform"].get(t) if off else None
    rows.append(
      [
        t,
        _pct(m_on and m_on["accuracy"]),
        _pct(m_off and m_off["accuracy"]),
        (m_on or m_off)["trajectories"],
        m_on and m_on["tool_calls_per_trajectory"],
        _pct(m_on and m_on["tool_use_rate"]),
        _pct(m_on and m_on["tool_error_rate"]),
        (m_on or m_off)["turns"],
      ]
    )
  rows.append(
    [
      f"average over {len(transforms)} transform(s)",
      _pct(on and on["average_accuracy"]),
      _pct(off and off["average_accuracy"]),
      (on or off)["all"]["trajectories"],
      on and on["all"]["tool_calls_per_trajectory"],
      _pct(on and on["all"]["tool_use_rate"]),
      _pct(on and on["all"]["tool_error_rate"]),
      (on or off)["all"]["turns"],
    ]
  )
  return suite, header, rows


def published_table(suite: str) -> tuple[str, list[str], list[list]] | None:
  """The paper's numbers for `suite`, labelled as published."""
  if suite not in PUBLISHED:
    return None
  return (
    f"{suite}: published (CodeVision paper, full benchmark, not this run)",
    ["model", "setting", "accuracy %"],
    [list(row) for row in PUBLISHED[suite]],
  )


def _markdown_table(header, rows) -> str:
  def cell(v):
    if v is None:
      return "–"
    return f"{v:.3f}" if isinstance(v, float) and not float(v).is_integer() else str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def plots(suites: dict) -> list[tuple[str, bytes]]:
  """PNG plots: accuracy by transform with and without tools, and tool usage."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  def png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()

  out = []
  n = len(suites)
  fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.6), squeeze=False)
  for ax, (suite, modes) in zip(axes[0], suites.items()):
    transforms = list(next(iter(modes.values()))["by_transform"])
    width = 0.8 / len(modes)
    for k, (mode, m) in enumerate(sorted(modes.items())):
      acc = [100 * (m["by_transform"].get(t, {}).get("accuracy") or 0) for t in transforms]
      ax.bar(
        [i + (k - (len(modes) - 1) / 2) * width for i in range(len(transforms))], acc, width, label=_MODE_LABEL[mode]
      )
    ax.set_xticks(range(len(transforms)), [t.replace("_", "\n") for t in transforms], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(suite)
    ax.legend(fontsize=8)
  out.append(("Accuracy by transform, with and without the code tool", png(fig)))

  with_tools = {s: m["on"] for s, m in suites.items() if "on" in m}
  if with_tools:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for suite, m in with_tools.items():
      transforms = list(m["by_transform"])
      axes[0].plot(
        range(len(transforms)),
        [m["by_transform"][t]["tool_calls_per_trajectory"] for t in transforms],
        marker="o",
        label=suite,
      )
      axes[0].set_xticks(range(len(transforms)), [t.replace("_", "\n") for t in transforms], fontsize=8)
    axes[0].set_ylabel("tool calls per trajectory")
    axes[0].legend(fontsize=8)
    ops = collections.Counter()
    for m in with_tools.values():
      ops.update(m["all"]["ops"])
    names = [k for k, _ in ops.most_common(12)]
    axes[1].barh(names[::-1], [ops[k] for k in names[::-1]])
    axes[1].set_xlabel("calls performing the operation")
    axes[1].set_title("operations the executor saw")
    out.append(("Tool usage (tools on): calls by transform, and operations", png(fig)))
  return out


def write_report(out: str, results: Sequence[dict], *, meta: dict, bad_items: Sequence[dict] = ()) -> dict:
  """Writes report.json, report.md and report.html under `out`; returns the report."""
  suites = aggregate(results)
  bad = collections.Counter(b["suite"] for b in bad_items)
  report = {
    "meta": meta,
    "bad_items": dict(bad),
    "suites": suites,
    "published": {s: PUBLISHED[s] for s in suites if s in PUBLISHED},
  }
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)

  tables = []
  for suite, modes in suites.items():
    tables.append(suite_table(suite, modes))
    published = published_table(suite)
    if published:
      tables.append(published)
  notes = list(meta.get("notes", ()))
  lines = [f"# Eval report: {meta.get('model', '')}", ""] + [f"- {n}" for n in notes] + [""]
  for suite, modes in suites.items():
    lines.append(f"## {suite} ({bad.get(suite, 0)} bad item(s) left out, listed in bad_items.jsonl)\n")
    lines.append(_markdown_table(*suite_table(suite, modes)[1:]) + "\n")
    for mode, m in modes.items():
      lines.append(
        f"- {_MODE_LABEL[mode]}: finish reasons (share of trajectories) "
        f"{m['all']['finish']}; operations {m['all']['ops'] or 'none'}"
      )
    published = published_table(suite)
    if published:
      lines += [
        "",
        "Published (CodeVision paper, the full benchmark; not measured by this run):",
        "",
        _markdown_table(*published[1:]),
      ]
    lines.append("")
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))

  viewer.render(
    os.path.join(out, "report.html"),
    title=f"Eval report: {meta.get('model', '')}",
    trajectories=list(results),
    tables=tables,
    plots=plots(suites) if suites else (),
    notes=notes,
  )
  return report
