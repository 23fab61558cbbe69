"""python -m evals.orientation --config=configs/orientation_eval.py --checkpoint=DIR --out=DIR

    [--suite=S --data=FILE] [--tools=both] [--config.rollout.slots=64 --config.agent.max_turns=12]

The orientation-robustness eval: every item of a VQA suite asked upright and under each of the
five transforms (rotate 90/180/270, flip horizontal, flip vertical), with the code tool on and,
as the no-tool baseline, off (`--tools=on|off|both`). Scored exactly as RL rewards are (the
answer rule, then the judge when `--judge` names one; rule-only otherwise, said in the report).

  --config      the rollout config (`configs/orientation_eval.py` by default, the sections of
                `configs/tiny_rollout.py`): the sampler (`rollout.slots`, `rollout.temperature`,
                greedy by default), the agent's limits (`agent.max_turns`, `max_total_tokens`,
                `tool_timeout_s`, `system_prompt`), the image budget (`data.max_pixels`, 0: the
                checkpoint's), the weights' dtype (`model.param_dtype`), `seed`, the local
                executor's `executor.workers` and the judge's `judge.max_concurrency`; override any
                with --config.FIELD=VALUE. The sampler and agent are those of launch.rollout and RL
                (`codevision_jax.rl.rollouts`).
  --checkpoint  an HF checkpoint directory, or a launch.sft / launch.rl workdir (its newest
                checkpoint is exported to <out>/model first); it sets the config's model.path
                (and its tokenizer); omitted: the config's model, by default the tiny random one
                (a smoke test)
  --suite/--data  synthetic (built in, held-out synthetic tasks; no --data) or a published suite
                read from its local file: ocrbench (OCRBench.json with OCRBench_Images/),
                chartqapro (parquet), mvtoolbench (verl parquet), vstar (test_questions.jsonl),
                hrbench4k / hrbench8k (hr_bench_4k.tsv / hr_bench_8k.tsv). Suites published with
                their own transforms (mvtoolbench) or none (vstar, hrbench) are asked as published
                unless --transforms says otherwise.

Writes under --out: results.jsonl (one scored case per line: its transcript, correctness and
reward parts), images/, bad_items.jsonl (items that could not be used, by file and row),
report.json, report.md (beside the published numbers) and report.html (plots and a trajectory
viewer). Rerunning the same command resumes: cases already in results.jsonl are not run again.

The flags say what is asked (suite, data, checkpoint, transforms, tools, limit, the synthetic
suite's size and kinds) and where the services are (`--executor`, `--judge`, `--judge_model`);
how the model samples and acts is the config's.

From Python: `evaluate(out, EvalSettings(config=cfg, suite=..., ...))`, whose fields are the
flags' and the config (`EvalSettings.from_flags`); `evaluate` reads the items, runs the cases not
yet scored (`_run`: the rollout service's executor, policy, agent and scoring) and writes the
report (`_write_report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import tqdm

from codevision_jax.execution.client import ExecutorClient
from codevision_jax.processing import orientation
from codevision_jax.rl import rollouts
from codevision_jax.runtime import layout, run_setup
from evals import report as report_lib
from evals import runner, suites
from evals.suites import synthetic as synthetic_suite

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
# Suites whose items are asked as published unless --transforms says otherwise.
AS_PUBLISHED = ("mvtoolbench", "vstar", "hrbench4k", "hrbench8k")
CONFIG_FILE = "eval_config.json"
SMOKE_MAX_PIXELS = 28 * 28 * 64  # The tiny random model's images when data.max_pixels is 0.
MOVED_FLAGS = {
  "batch": "rollout.slots",
  "temperature": "rollout.temperature",
  "seed": "seed",
  "max_turns": "agent.max_turns",
  "max_total_tokens": "agent.max_total_tokens",
  "tool_timeout_s": "agent.tool_timeout_s",
  "system_prompt": "agent.system_prompt",
  "max_pixels": "data.max_pixels",
  "dtype": "model.param_dtype",
  "executor_workers": "executor.workers",
}
"""Flags the eval binary had, and the config fields that replaced them."""


class EvalError(ValueError):
  """A bad eval request or input, found before the model is loaded."""


def default_transforms(suite: str) -> tuple[str, ...]:
  return ("none",) if suite in AS_PUBLISHED else orientation.TRANSFORMS


def read_items(
  suite: str,
  data: str | None,
  *,
  limit: int = 0,
  synthetic_size: int = 24,
  synthetic_kinds: Sequence[str] | None = None,
  synthetic_p_small: float = 0.5,
):
  """(items, bad items) of the suite; raises EvalError for a missing or superfluous --data."""
  if suite == SYNTHETIC:
    if data:
      raise EvalError(
        f"--data={data} was given with --suite=synthetic (the built-in benchmark); "
        f"name the suite of the file with --suite (one of {sorted(suites.SUITES)})"
      )
    n = min(synthetic_size, limit) if limit else synthetic_size
    kinds = tuple(synthetic_kinds) if synthetic_kinds else None
    return synthetic_suite.synthetic_items(n, p_small=synthetic_p_small, **({"kinds": kinds} if kinds else {})), []
  if suite not in suites.SUITES:
    raise EvalError(f"unknown --suite={suite!r}; choose from {[SYNTHETIC] + sorted(suites.SUITES)}")
  if not data:
    raise EvalError(f"--suite={suite} reads its published file: pass --data=PATH")
  return suites.read_suite(suite, data, limit=limit)


def model_dir(checkpoint: str, out: str) -> tuple[str, int | None]:
  """(HF directory, training step or None) of --checkpoint: the directory itself when it holds
  an HF checkpoint, else a training workdir's newest checkpoint exported to `<out>/model`."""
  if os.path.exists(os.path.join(checkpoint, "config.json")):
    return checkpoint, None
  if os.path.isdir(layout.checkpoints(checkpoint)):
    from codevision_jax.runtime import export

    steps = export.checkpoint_steps(checkpoint)
    if not steps:
      raise EvalError(f"--checkpoint={checkpoint}: no finished checkpoint in {layout.checkpoints(checkpoint)}")
    target = os.path.join(out, "model")
    stamp = os.path.join(out, "model.step")
    if not (
      os.path.exists(os.path.join(target, "config.json"))
      and os.path.exists(stamp)
      and open(stamp).read().strip() == str(steps[-1])
    ):
      if os.path.exists(target):
        import shutil

        shutil.rmtree(target)
      log.info("exporting step %d of %s to %s", steps[-1], checkpoint, target)
      export.export_run(checkpoint, target, step=steps[-1])
      with open(stamp, "w") as f:
        f.write(str(steps[-1]))
    return target, steps[-1]
  raise EvalError(
    f"--checkpoint={checkpoint}: neither an HF checkpoint directory (with "
    "config.json) nor a launch.sft / launch.rl workdir (with checkpoints/)"
  )


def _check_resume(out: str, request: dict) -> None:
  """Refuses to mix results of a different model, suite, data or agent setting into `out`."""
  path = os.path.join(out, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = [f"{k}: {before.get(k)!r} -> {request[k]!r}" for k in request if before.get(k) != request[k]]
    if changed:
      raise EvalError(
        f"{out} holds results of a different eval ({', '.join(changed)}); pass a "
        f"new --out, or delete {out} to start over"
      )
  os.makedirs(out, exist_ok=True)
  with open(path, "w") as f:
    json.dump(request, f, indent=2)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What one eval run asks for: the rollout config (`config`: model, sampler, agent limits; see
  the module docstring) and the binary's flags (the suite, the cases, where the services are)."""

  config: Any = None  # the rollout config (configs/orientation_eval.py's get_config()); required
  suite: str = SYNTHETIC
  data: str | None = None  # the suite's published file (not for synthetic)
  checkpoint: str | None = None  # HF directory or training workdir; None: the config's model
  transforms: Sequence[str] | None = None  # None: default_transforms(suite)
  tools: Sequence[str] = ("on", "off")
  limit: int = 0  # only the first N items (0: all)
  executor_urls: Sequence[str] = ()  # empty: start a local service (when a case uses the tool)
  judge_url: str = ""  # empty: rule-only scoring
  judge_model: str = "judge"
  synthetic_size: int = 24
  synthetic_kinds: Sequence[str] | None = None
  synthetic_p_small: float = 0.5
  notes: Sequence[str] = ()  # added to the report's notes
  progress: bool = True  # the progress bar

  @property
  def transforms_asked(self) -> tuple[str, ...]:
    return tuple(self.transforms or default_transforms(self.suite))

  @classmethod
  def from_flags(cls, f) -> EvalSettings:
    """The settings of `python -m evals.orientation`'s flags (`define_flags`); a flag that moved
    into the config raises EvalError naming its field."""
    moved = [f"--{k} is now --config.{v}" for k, v in MOVED_FLAGS.items() if f[k].present]
    if moved:
      raise EvalError("the agent and sampler settings come from the rollout config: " + "; ".join(moved))
    return cls(
      config=f.config,
      suite=f.suite,
      data=f.data,
      checkpoint=f.checkpoint,
      transforms=f.transforms,
      tools=("on", "off") if f.tools == "both" else (f.tools,),
      limit=f.limit,
      executor_urls=f.executor or (),
      judge_url=f.judge or "",
      judge_model=f.judge_model,
      synthetic_size=f.synthetic_size,
      synthetic_kinds=f.synthetic_kinds,
      synthetic_p_small=f.synthetic_p_small,
    )


def evaluate(out: str, settings: EvalSettings | None = None, **fields) -> dict:
  """Runs (or resumes) the eval into `out` and writes its report; returns the report with
  `run` (counts of this invocation) and `paths` added. `fields` replace fields of `settings`
  (default `EvalSettings()`) by name: `evaluate(out, suite="vstar", data=path)`."""
  s = dataclasses.replace(settings or EvalSettings(), **fields)
  if s.config is None:
    raise EvalError(
      "no rollout config: pass EvalSettings(config=...), e.g. the get_config() of "
      "configs/orientation_eval.py (python -m evals.orientation loads it by default)"
    )
  t0 = time.perf_counter()
  items, bad = _usable_items(out, s)
  cases = runner.make_cases(items, s.transforms_asked, tuple(s.tools))
  hf_dir, step = model_dir(s.checkpoint, out) if s.checkpoint else (None, None)
  cfg = rollout_config(s, hf_dir)
  _check_resume(out, _request(s, cfg, step))
  todo = [c for c in cases if c.key not in runner.load_results(out)]
  stats = runner.RunStats(skipped=len(cases) - len(todo))
  if todo:
    stats = _run(out, s, cfg, todo, total=len(cases))
  report = _write_report(out, s, items, bad, cases, stats, step)
  report["run"] = {**dataclasses.asdict(stats), "wall_s": time.perf_counter() - t0}
  report["paths"] = {
    k: os.path.join(out, f)
    for k, f in (
      ("html", "report.html"),
      ("markdown", "report.md"),
      ("json", "report.json"),
      ("results", runner.RESULTS),
      ("bad_items", "bad_items.jsonl"),
    )
  }
  return report


def _usable_items(out: str, s: EvalSettings):
  """(items, bad items) of the suite, the bad ones listed in <out>/bad_items.jsonl and the first
  ten logged; raises EvalError when no item is usable."""
  items, bad = read_items(
    s.suite,
    s.data,
    limit=s.limit,
    synthetic_size=s.synthetic_size,
    synthetic_kinds=s.synthetic_kinds,
    synthetic_p_small=s.synthetic_p_small,
  )
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "bad_items.jsonl"), "w") as f:
    for b in bad:
      f.write(json.dumps(dataclasses.asdict(b)) + "\n")
  for b in bad[:10]:
    log.warning("bad item, left out and counted: %s:%d: %s", b.file, b.row, b.reason)
  if not items:
    raise EvalError(
      f"0 usable items in {s.data or s.suite} ({len(bad)} bad, listed in {os.path.join(out, 'bad_items.jsonl')})"
    )
  return items, bad


def _request(s: EvalSettings, cfg, step: int | None) -> dict:
  """What a resumed eval must share with the results already in --out (`_check_resume`)."""
  return {
    "suite": s.suite,
    "data": os.path.abspath(s.data) if s.data else None,
    "checkpoint": os.path.abspath(s.checkpoint) if s.checkpoint else None,
    "checkpoint_step": step,
    "agent": dataclasses.asdict(rollouts.agent_config(cfg)),
    "max_pixels": cfg.data.max_pixels,
    "dtype": cfg.model.param_dtype,
    "temperature": cfg.rollout.temperature,
    "seed": cfg.seed,
    "judge": s.judge_url or None,
    "synthetic": (
      {"kinds": list(s.synthetic_kinds or ()), "p_small": s.synthetic_p_small} if s.suite == SYNTHETIC else None
    ),
  }


def rollout_config(s: EvalSettings, hf_dir: str | None):
  """A copy of `s.config` as the eval runs it: the model of `hf_dir` (weights and tokenizer)
  when a checkpoint is given; `data.max_pixels` 0 is the checkpoint's, SMOKE_MAX_PIXELS without
  one; the judge of `--judge` / `--judge_model`."""
  cfg = s.config.copy_and_resolve_references()
  rollouts.check_config(cfg)
  with cfg.unlocked():
    if hf_dir:
      cfg.model.path, cfg.model.tokenizer = hf_dir, ""
    elif not cfg.data.max_pixels and not cfg.model.path:
      cfg.data.max_pixels = SMOKE_MAX_PIXELS
    if cfg.get("judge") is None:
      cfg.judge = {"url": "", "model": ""}
    cfg.judge.url, cfg.judge.model = s.judge_url, s.judge_model
  return cfg


def _run(out: str, s: EvalSettings, cfg, todo, *, total: int) -> runner.RunStats:
  """Loads the model, runs and scores the cases `todo` into `out` through the rollout service,
  with a progress bar over all `total` cases. The executor (a local one when --executor is not
  given) is checked before the model loads, when a case uses the tool."""
  needed = any(c.tools == "on" for c in todo)
  with rollouts.executor_services(
    s.executor_urls, workers=cfg.executor.workers, setting="--executor", needed=needed
  ) as urls:
    tokenizer, model, settings = rollouts.model_parts(cfg, out)
    policy = rollouts.build_policy(cfg, model, tokenizer, rules=run_setup.mesh_rules(cfg.mesh))
    bar = tqdm.tqdm(total=total, initial=total - len(todo), desc=f"eval {s.suite}", unit="case", disable=not s.progress)

    async def go():
      async with contextlib.AsyncExitStack() as a:
        client = await a.enter_async_context(ExecutorClient(urls, setting="--executor")) if urls else None
        judge = await a.enter_async_context(rollouts.judge(cfg))
        return await runner.run_cases(
          todo,
          out,
          policy=policy,
          tokenizer=tokenizer,
          client=client,
          settings=settings,
          agent=rollouts.agent_config(cfg),
          judge=judge,
          chunk=max(cfg.rollout.slots * 4, 16),
          on_scored=bar.update,
        )

    stats = asyncio.run(go())
    bar.close()
  return stats


def _model_name(s: EvalSettings, step: int | None) -> str:
  if not s.checkpoint:
    return "the tiny random model (embedded default)"
  return f"{s.checkpoint}" + (f" (step {step})" if step is not None else "")


def _notes(s: EvalSettings, items, bad, cases, results, stats: runner.RunStats, model_name: str) -> list[str]:
  """The report's notes: what was run, how it was scored, and what is missing or not measured."""
  notes = [
    f"model: {model_name}; suite {s.suite} ({len(items)} items, {len(bad)} bad and left out); "
    f"transforms {', '.join(s.transforms_asked)}; tools {', '.join(s.tools)}",
    ("scoring: the answer rule, then the LLM judge at " + s.judge_url)
    if s.judge_url
    else "scoring: rule-only (no --judge): answers the rule does not match count as wrong",
  ] + list(s.notes)
  if not s.checkpoint:
    notes.append("random weights: a smoke test of the pipeline, not a measurement")
  if stats.executor_failures:
    notes.append(
      f"{stats.executor_failures} case(s) not scored: the executor could not be "
      "reached; rerun the same command to retry them"
    )
  if len(results) < len(cases):
    notes.append(f"{len(cases) - len(results)} of {len(cases)} cases have no result yet")
  return notes


def _write_report(out: str, s: EvalSettings, items, bad, cases, stats: runner.RunStats, step: int | None) -> dict:
  """Writes report.json, report.md and report.html of this eval's cases in `out`."""
  keys = {c.key for c in cases}
  results = [r for k, r in runner.load_results(out).items() if k in keys]
  model_name = _model_name(s, step)
  meta = {
    "model": model_name,
    "suite": s.suite,
    "data": s.data,
    "transforms": list(s.transforms_asked),
    "tools": list(s.tools),
    "items": len(items),
    "cases": len(cases),
    "judge": s.judge_url or None,
    "notes": _notes(s, items, bad, cases, results, stats, model_name),
  }
  return report_lib.write_report(out, results, meta=meta, bad_items=[dataclasses.asdict(b) for b in bad])


def summary_lines(report: dict) -> list[str]:
  """The terminal summary of a report: accuracy per suite and mode, and where the files are."""
  lines = []
  for suite, modes in report["suites"].items():
    for mode, m in modes.items():
      by = ", ".join(f"{t} {100 * x['accuracy']:.1f}" for t, x in m["by_transform"].items())
      lines.append(
        f"   {suite}, tools {mode}: average {100 * m['average_accuracy']:.1f}% "
        f"({by}); {m['all']['tool_calls_per_trajectory']:.2f} calls per trajectory"
      )
  for note in report["meta"]["notes"]:
    lines.append(f"   note: {note}")
  lines.append(
    f"   report: {report['paths']['html']} (open in a browser), "
    f"{report['paths']['markdown']}, {report['paths']['json']}"
  )
  return lines


def main(argv):
  del argv
  from absl import flags

  f = flags.FLAGS
  logging.getLogger().setLevel(logging.INFO)
  run_setup.quiet_orbax(f.orbax_logs)
  out = f.out or os.path.join("/tmp", f"cvj-eval-{int(time.time())}")
  try:
    report = evaluate(out, EvalSettings.from_flags(f))
  except EvalError as e:
    raise SystemExit(f"error: {e}")
  print(
    f"== eval done in {report['run']['wall_s']:.0f} s: {report['run']['scored']} cases "
    f"scored now, {report['run']['skipped']} from an earlier run"
  )
  print("\n".join(summary_lines(report)))


DEFAULT_CONFIG = "configs/orientation_eval.py"


def define_flags():
  from absl import flags

  from launch import errors

  errors.define_config_file(
    DEFAULT_CONFIG,
    "The rollout config: model, sampler (rollout.*), agent limits (agent.*); see the module docstring.",
    lock_config=False,
  )
  flags.DEFINE_string(
    "checkpoint",
    None,
    "HF checkpoint directory or training workdir (default: the config's model, the tiny random one).",
  )
  flags.DEFINE_string(
    "suite", SYNTHETIC, "synthetic, ocrbench, chartqapro, mvtoolbench, vstar, hrbench4k or hrbench8k."
  )
  flags.DEFINE_string("data", None, "The suite's published file (not for synthetic).")
  flags.DEFINE_string(
    "out", None, "Output directory (default: a new one under /tmp); rerun with the same --out to resume."
  )
  flags.DEFINE_enum(
    "tools", "both", ["on", "off", "both"], "With the code tool, without (the no-tool baseline), or both."
  )
  flags.DEFINE_list(
    "transforms",
    None,
    "Transforms to ask each item under (default: upright and all five; as published for mvtoolbench, vstar, hrbench).",
  )
  flags.DEFINE_integer("limit", 0, "Only the first N items (0: all).")
  flags.DEFINE_list(
    "executor", None, "Executor service URLs (default: start a local one of --config.executor.workers workers)."
  )
  flags.DEFINE_string(
    "judge",
    None,
    "OpenAI-compatible endpoint of the LLM judge, e.g. http://judge:8000/v1 (default: rule-only scoring).",
  )
  flags.DEFINE_string("judge_model", "judge", "The judge endpoint's model name.")
  flags.DEFINE_integer("synthetic_size", 24, "Items of the built-in synthetic suite.")
  flags.DEFINE_list("synthetic_kinds", None, "Only these synthetic kinds (word, number, arrow, chart).")
  flags.DEFINE_float(
    "synthetic_p_small", 0.5, "Share of synthetic items whose card is small on a busy canvas (a crop is needed)."
  )
  flags.DEFINE_bool("orbax_logs", False, "Show Orbax's and JAX's INFO log lines.")
  for name, field in MOVED_FLAGS.items():  # Refused with the field that replaced each.
    flags.DEFINE_string(name, None, f"Moved: --config.{field}.")


if __name__ == "__main__":
  from launch import errors

  define_flags()
  errors.run(main, default_config=DEFAULT_CONFIG)
