"""python -m launch.view --rollouts=DIR [--out=FILE]

Writes one HTML page (`evals.viewer`) to read rollouts in a browser: every trajectory's turns,
tool calls (code, stdout, errors, result images), answer and reward parts, with filters, and a
table of counts. DIR is one of
  - a `launch.rollout --out` directory (`transcripts.jsonl`, `images/`);
  - an RL workdir's `rollouts/` directory (`round_00001/`, ... each with `transcripts.jsonl` and
    `images/`): a trajectory's key is `<round>/<id>`, its suite the round, so the suite filter
    selects a round, and the table has a row per round;
  - an RL workdir itself (its `rollouts/` is read).
The page goes to FILE (default `DIR/view.html`); it links the images where they are (relative
paths), so keep it beside them. It needs no network: open it with `xdg-open FILE` or any browser.
"""

from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags

from codevision_jax.runtime import layout
from evals import viewer
from launch import errors

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs (tests import this module beside other
  launchers that have an --out)."""
  flags.DEFINE_string("rollouts", None, "A launch.rollout output directory, an RL workdir, or its rollouts/ directory.")
  flags.DEFINE_string("out", None, "The HTML file to write (default: DIR/view.html).")


TRANSCRIPTS = "transcripts.jsonl"


def find_runs(directory: str) -> list[tuple[str | None, str]]:
  """[(round name or None, directory holding transcripts.jsonl)] of `directory`: itself when it
  holds transcripts.jsonl, else its subdirectories that do (in name order), of `directory` or of
  its `rollouts/`."""
  if os.path.isfile(os.path.join(directory, TRANSCRIPTS)):
    return [(None, directory)]
  for base in (directory, layout.rollouts(directory)):
    if not os.path.isdir(base):
      continue
    rounds = [
      (name, os.path.join(base, name))
      for name in sorted(os.listdir(base))
      if os.path.isfile(os.path.join(base, name, TRANSCRIPTS))
    ]
    if rounds:
      return rounds
  raise FileNotFoundError(
    f"{directory}: no {TRANSCRIPTS} there, in its subdirectories (round_00001/, ...) or under "
    f"its rollouts/; pass a `launch.rollout --out` directory, an RL workdir or its rollouts/ "
    f"directory (RL saves rounds' transcripts when train.save_rollouts > 0)"
  )


def read_transcripts(path: str) -> list[dict]:
  """The records of a transcripts.jsonl file."""
  out = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not a JSON line ({e}); is the file complete?") from e
  return out


def _relocate(path: str | None, run: str, html_dir: str) -> str | None:
  """An image path relative to `run` made relative to the page's directory (with '/')."""
  if not path:
    return path
  rel = os.path.relpath(os.path.join(run, path), html_dir)
  return rel.replace(os.sep, "/")


def load(runs: list[tuple[str | None, str]], html_dir: str) -> list[dict]:
  """Every run's transcripts, keyed (`<round>/<id>` for rounds) and with image paths relative to
  `html_dir`."""
  out = []
  for name, run in runs:
    for t in read_transcripts(os.path.join(run, TRANSCRIPTS)):
      t = dict(t)
      own = t.get("key", t.get("id"))
      if name is not None:
        t["key"] = f"{name}/{own}"
        t["suite"] = name
      elif "key" not in t:
        t["key"] = str(own)
      t["images"] = [_relocate(p, run, html_dir) for p in t.get("images") or []]
      t["tool_calls"] = [
        {**c, "result_image": _relocate(c.get("result_image"), run, html_dir)} for c in t.get("tool_calls") or []
      ]
      out.append(t)
  return out


def _mean(xs):
  xs = list(xs)
  return sum(xs) / len(xs) if xs else None


def counts_row(label: str, trajectories: list[dict]) -> list:
  """label, trajectories, graded, accuracy over the graded, mean reward score, tool calls per
  trajectory, failed tool calls per trajectory."""
  graded = [t for t in trajectories if t.get("correct") is not None]
  scores = [
    t["reward"]["score"]
    for t in trajectories
    if isinstance(t.get("reward"), dict) and t["reward"].get("score") is not None
  ]
  calls = [c for t in trajectories for c in t.get("tool_calls") or []]
  n = len(trajectories)
  return [
    label,
    n,
    len(graded),
    _mean(bool(t["correct"]) for t in graded),
    _mean(scores),
    len(calls) / n if n else None,
    sum(c.get("status") != "ok" for c in calls) / n if n else None,
  ]


def round_metrics(rollouts: str) -> dict[str, dict]:
  """{round directory name: that round's line of the RL run's metrics.jsonl} (all of the round's
  trajectories, not only the saved ones), when `rollouts` is an RL workdir or its rollouts/."""
  base = os.path.abspath(rollouts)
  for directory in (base, os.path.dirname(base)):
    path = layout.metrics(directory)
    if os.path.isfile(path):
      out = {}
      for line in read_transcripts(path):
        if isinstance(line.get("round"), int):
          out[os.path.basename(layout.round_dir(directory, line["round"]))] = line
      return out
  return {}


def counts_table(runs, trajectories: list[dict], metrics: dict | None = None) -> tuple[str, list[str], list[list]]:
  """(heading, header, rows): a row per round and one over all. The counts are of the saved
  trajectories (a sample of a round: `train.save_rollouts`); the round's own accuracy and reward
  over all its trajectories come from `metrics` (its metrics.jsonl lines) when given."""
  header = [
    "round",
    "trajectories saved",
    "graded",
    "accuracy of the saved sample",
    "mean reward of the saved sample",
    "tool calls / trajectory",
    "failed calls / trajectory",
  ]
  rows = []
  if len(runs) > 1 or runs[0][0] is not None:
    rows = [counts_row(name, [t for t in trajectories if t.get("suite") == name]) for name, _ in runs]
  rows.append(counts_row("all", trajectories))
  if metrics:
    header += ["round accuracy (all trajectories, metrics.jsonl)", "round reward (all trajectories, metrics.jsonl)"]
    for row in rows:
      line = metrics.get(row[0], {})
      row += [line.get("rollout/accuracy"), line.get("rollout/reward/score")]
  return "Rollouts" + (" by round" if len(rows) > 1 else ""), header, rows


def build(rollouts: str, out: str | None = None) -> str:
  """Writes the page of the rollouts under `rollouts` to `out` (default: `rollouts/view.html`);
  returns its path."""
  runs = find_runs(rollouts)
  out = out or os.path.join(rollouts, "view.html")
  html_dir = os.path.dirname(os.path.abspath(out))
  trajectories = load(runs, html_dir)
  rounds = [name for name, _ in runs if name is not None]
  metrics = round_metrics(rollouts) if rounds else {}
  notes = [
    f"{len(trajectories)} trajectories from {os.path.abspath(rollouts)}"
    + (f" ({len(rounds)} rounds: {rounds[0]} to {rounds[-1]})" if rounds else "")
    + ".",
    *(
      [
        "The saved trajectories are a sample of each round (train.save_rollouts): their "
        "accuracy is the sample's; "
        + (
          "the round's own, over all its trajectories, is the metrics.jsonl column."
          if metrics
          else "no metrics.jsonl was found beside them for the round's own."
        )
      ]
      if rounds
      else []
    ),
    "Images are linked where they are, relative to this file: keep the file in place "
    "(or rebuild it with python -m launch.view) for them to show.",
  ]
  return viewer.render(
    out,
    title=f"Rollouts: {os.path.abspath(rollouts)}",
    trajectories=trajectories,
    tables=[counts_table(runs, trajectories, metrics)],
    notes=notes,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.rollouts:
    raise app.UsageError("--rollouts=DIR is required (a launch.rollout output, an RL workdir or its rollouts/)")
  try:
    out = os.path.abspath(build(FLAGS.rollouts, FLAGS.out))
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"launch.view: {e}") from None
  print(f"wrote {out}\nopen it:  xdg-open {out}\nor paste into a browser:  {pathlib.Path(out).as_uri()}")


if __name__ == "__main__":
  define_flags()
  errors.run(main)
