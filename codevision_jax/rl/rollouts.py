"""The rollout service: a config's policy runs records through the agent loop on the executor, its
answers are scored as each trajectory finishes, and one summary describes the lot. RL (`rl.loop`),
`launch.rollout` and the eval binary (`evals`) all go through it.

    policy = build_policy(cfg, model, tokenizer)                  # cfg.rollout, cfg.agent, cfg.seed
    with executor_services(cfg.executor.urls, workers=cfg.executor.workers) as urls:
      async with ExecutorClient(urls) as client, judge(cfg) as j:
        ro = await rollout(policy, records, tokenizer=tokenizer, client=client, settings=settings,
                           agent=agent_config(cfg), judge=j, reward=reward_options(cfg))
    summary = ro.summary()                                          # SUMMARY's vocabulary
    metrics(summary, "rollout")                                     # {"rollout/accuracy": ...}

The config sections it reads are those of the RL recipes: `rollout` (slots, chunk,
steps_per_call, temperature, top_k, top_p), `agent` (`sampling.environment.AgentConfig`),
`executor` (urls, workers), and optionally `judge` and `reward`; `seed` seeds the sampling.

Scoring overlaps the rollout: when a trajectory finishes its answer's verdict starts at once
(`rl.scoring.verdict`: the rule, then the judge, whose calls run concurrently up to its
`max_concurrency`); the group terms of the reward are added when all have finished.
`ScoredRollouts.scoring_s` is what remains of scoring after the last trajectory finished.

One summary (`summarize`) serves RL's metrics.jsonl, launch.rollout's summary.json and the eval
report; SUMMARY names its keys. It is computed from `Outcome`s, which come from a trajectory and
its reward parts, or from its transcript record (`rl.transcript`, the eval's results.jsonl).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from codevision_jax.execution import ops as ops_lib
from codevision_jax.rl import scoring, transcript
from codevision_jax.sampling import agent as agent_lib
from codevision_jax.sampling import environment
from codevision_jax.sampling.environment import AgentConfig
from codevision_jax.sampling.trajectory import CallStatus, Trajectory

log = logging.getLogger(__name__)

ROLLOUT_KEYS = ("slots", "chunk", "steps_per_call", "temperature", "top_k", "top_p")
"""The sampler settings of a config's `rollout` section (RL's add prompts, group_size, ...)."""

RENAMED = {
  "sampling.samples": "rollout.group_size",
  "sampling.seed": "seed",
  **{f"sampling.{k}": f"rollout.{k}" for k in ROLLOUT_KEYS},
}
"""Keys of the old `sampling` section of rollout configs, and where they live now."""


# ---- from a config -------------------------------------------------------------------------------


def check_config(cfg) -> None:
  """Raises when `cfg` still has the `sampling` section the sampler settings moved out of, naming
  each key's new home."""
  old = cfg.get("sampling")
  if old is None:
    return
  moved = [f"sampling.{k} -> {RENAMED.get(f'sampling.{k}', 'no longer a setting')}" for k in old]
  raise ValueError(
    "the config has a `sampling` section; the sampler settings now live where the "
    f"RL recipes keep them ({'; '.join(moved)}): rename them, as in "
    "configs/tiny_rollout.py"
  )


def agent_config(cfg) -> AgentConfig:
  """The agent limits of `cfg.agent`."""
  return AgentConfig(**cfg.agent.to_dict())


def build_policy(cfg, model, tokenizer, *, rules=None, params=None):
  """The decode-engine policy of `model` with `cfg.rollout`'s sampler settings: `rollout.slots`
  trajectories in flight, each of up to `agent.max_total_tokens` tokens, sampling with `seed`;
  a paged KV cache of `rollout.kv_pool_tokens` in pages of `rollout.kv_page_size` (0: dense).
  `rules` / `params`: the engine's logical-axis rules and parameters (`ModelPolicy`)."""
  from codevision_jax.sampling.policy import ModelPolicy  # Deferred: it brings in JAX.

  check_config(cfg)
  r = cfg.rollout
  return ModelPolicy(
    model,
    environment.stop_ids(tokenizer),
    num_slots=r.slots,
    capacity=cfg.agent.max_total_tokens,
    chunk=r.chunk,
    steps_per_call=r.steps_per_call,
    temperature=r.temperature,
    top_k=r.top_k,
    top_p=r.top_p,
    seed=cfg.seed,
    rules=rules,
    params=params,
    yield_ids=environment.yield_ids(tokenizer),
    page_size=r.get("kv_page_size", 0),
    pool_tokens=r.get("kv_pool_tokens", 0) or None,
  )


def reward_options(cfg) -> dict:
  """`scoring.score_verdicts`'s weights and tool-error penalty from `cfg.reward` ({} without one:
  the reward's defaults)."""
  r = cfg.get("reward")
  if r is None:
    return {}
  return {
    "weights": {k: r[k] for k in ("format", "alpha", "beta", "gamma", "emerge")},
    "tool_error_penalty": r.tool_error_penalty,
  }


def judge(cfg):
  """An async context giving the LLM judge of `cfg.judge` (`rl.judge.Judge`), or None when the
  config has no judge section or no `judge.url` (rule-only scoring)."""
  j = cfg.get("judge")
  if j is None or not j.url:
    return contextlib.nullcontext(None)
  from codevision_jax.rl.judge import Judge

  return Judge(
    j.url,
    j.model,
    max_concurrency=j.get("max_concurrency", 8),
    timeout_s=j.get("timeout_s", 30.0),
    retries=j.get("retries", 2),
  )


@contextlib.contextmanager
def executor_services(
  urls: str | Sequence[str], *, workers: int = 2, setting: str = "--config.executor.urls", needed: bool = True
) -> Iterator[list[str]]:
  """The executor services that answer `/healthz`, checked before anything slow is built: `urls`
  (a comma-separated string or a list), or, when there are none, a local service of `workers`
  workers (`executor.local.local_service`, its isolation layers logged) for the duration of the
  `with` block. `setting` is what the command calls the URLs (named when none answers).
  `needed=False` (no tool will run): neither starts nor checks anything, and gives the URLs."""
  from codevision_jax.execution.client import healthy_services

  if isinstance(urls, str):
    urls = urls.split(",")
  urls = [u.strip() for u in urls if u.strip()]
  if not needed:
    yield urls
    return
  with contextlib.ExitStack() as stack:
    if not urls:
      from executor.local import local_service  # The one local starter.

      service = stack.enter_context(local_service(workers=workers))
      layers = service.get_json("/healthz").get("isolation", {})
      log.info(
        "executor service at %s, isolation layers: %s",
        service.url,
        ", ".join(f"{k} {'on' if v else 'OFF'}" for k, v in layers.items()) or "none reported",
      )
      urls = [service.url]
    yield asyncio.run(healthy_services(urls, setting=setting))


# ---- running and scoring -----------------------------------------------------------------------


@dataclasses.dataclass
class ScoredRollouts:
  """Trajectories (in id order), their groups, scores and reward parts, and how the run went."""

  trajectories: list
  group_ids: np.ndarray
  scores: np.ndarray
  parts: list
  agent_stats: agent_lib.AgentStats
  scoring_stats: scoring.ScoringStats
  scoring_s: float  # scoring after the last trajectory finished

  def summary(self, *, timings: bool = True) -> dict:
    """`summarize` of these rollouts (with their timings unless `timings=False`)."""
    return summarize(
      [Outcome.of(t, p) for t, p in zip(self.trajectories, self.parts)],
      scoring_stats=self.scoring_stats,
      agent_stats=self.agent_stats if timings else None,
      scoring_s=self.scoring_s if timings else None,
    )

  @classmethod
  def concatenate(
    cls, shares: Sequence[ScoredRollouts], agent_stats: agent_lib.AgentStats | None = None
  ) -> ScoredRollouts:
    """One of several processes' shares, in order; the judge's counts summed, `scoring_s` the
    longest, the agent's statistics `agent_stats` (default: the first share's)."""
    return cls(
      [t for s in shares for t in s.trajectories],
      np.concatenate([s.group_ids for s in shares]),
      np.concatenate([s.scores for s in shares]),
      [p for s in shares for p in s.parts],
      agent_stats or shares[0].agent_stats,
      scoring.ScoringStats(
        **{
          f.name: sum(getattr(s.scoring_stats, f.name) for s in shares)
          for f in dataclasses.fields(scoring.ScoringStats)
        }
      ),
      max(s.scoring_s for s in shares),
    )


async def rollout(
  policy,
  records: Sequence,
  *,
  tokenizer,
  client,
  settings,
  agent: AgentConfig,
  group_ids: Sequence[int] | None = None,
  judge=None,
  reward: dict | None = None,
  first_id: int = 0,
  on_finish: Callable[[Trajectory], None] | None = None,
) -> ScoredRollouts:
  """Runs `records` through the agent loop (record k is trajectory `first_id + k`) and scores
  them; each answer's verdict (rule, then `judge`) starts as soon as its trajectory finishes.
  `group_ids`: each record's group for the reward's group term (default: one group each);
  `reward`: `reward_options`; `on_finish(trajectory)`: called as each one finishes."""
  pending: dict[int, asyncio.Future] = {}

  def finished(traj: Trajectory) -> None:
    pending[traj.id] = asyncio.ensure_future(scoring.verdict(traj, tokenizer, judge))
    if on_finish is not None:
      on_finish(traj)

  try:
    trajectories, stats = await agent_lib.run_agent(
      policy, records, tokenizer, client, settings, agent, on_finish=finished, first_id=first_id
    )
    t = time.perf_counter()
    verdicts = await asyncio.gather(*(pending[traj.id] for traj in trajectories))
  except BaseException:
    for task in pending.values():
      task.cancel()
    raise
  group_ids = np.arange(len(trajectories)) if group_ids is None else np.asarray(group_ids)
  scores, parts, sstats = scoring.score_verdicts(trajectories, group_ids, verdicts, **(reward or {}))
  return ScoredRollouts(trajectories, group_ids, scores, parts, stats, sstats, time.perf_counter() - t)


def expert_rollouts(convs, tokenizer, settings, group_ids, *, seed: int = 0) -> ScoredRollouts:
  """Conversations as finished trajectories, their assistant tokens as the policy's, with made-up
  sampler log-probs and scores (from `seed`): the learner's input without a rollout (tests and
  benchmarks). System turns and tool schemas are dropped; `group_ids`: each one's prompt group."""
  from codevision_jax.data import encode
  from codevision_jax.sampling.trajectory import Finish, TrajectoryImage

  rng = np.random.default_rng(seed)
  trajs = []
  for i, conv in enumerate(convs):
    conv = dataclasses.replace(conv, messages=[m for m in conv.messages if m["role"] != "system"], tools=None)
    ex = encode.encode(conv, tokenizer, settings)
    t = Trajectory(
      id=i,
      token_ids=ex.input_ids.tolist(),
      policy_mask=ex.loss_mask.tolist(),
      logprobs=(-rng.random(len(ex)) * ex.loss_mask).tolist(),
      finish_reason=Finish.ANSWER,
    )
    t.images = [
      TrajectoryImage(png, list(g), "input" if k == 0 else "tool")
      for k, (png, g) in enumerate(zip(conv.images, ex.image_grid_thw.tolist()))
    ]
    trajs.append(t)
  n = len(trajs)
  return ScoredRollouts(
    trajs,
    np.asarray(group_ids),
    rng.random(n).astype(np.float32),
    [{}] * n,
    agent_lib.AgentStats(),
    scoring.ScoringStats(),
    0.0,
  )


def write_transcripts(path: str, tokenizer, trajectories: Sequence[Trajectory], parts: Sequence[dict | None]) -> None:
  """`rl.transcript`'s readable record of each trajectory, a JSON line each, to `path`."""
  with open(path, "w", encoding="utf-8") as f:
    for traj, p in zip(trajectories, parts):
      f.write(json.dumps(transcript.transcript(tokenizer, traj, p), ensure_ascii=False) + "\n")


# ---- a rollout directory (launch.rollout) --------------------------------------------------------


def model_parts(cfg, workdir: str):
  """(tokenizer, model, image settings) of the config's `model`, `data` and `mesh` sections
  (`runtime.run_setup.model_parts` on the config's mesh); a tiny tokenizer, if one is needed, is
  built under `workdir`."""
  from codevision_jax.runtime import run_setup

  return run_setup.model_parts(cfg, workdir, run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh))


def config_records(cfg) -> list:
  """The config's data set (`data`: RL or eval records, or SFT records' prompts), its first
  `data.limit` records (0: all), each `rollout.group_size` times in a row."""
  from codevision_jax.runtime import run_setup

  source = run_setup.conversation_source(cfg.data, kind="rl")
  records = [source[i] for i in range(len(source))]
  if cfg.data.limit:
    records = records[: cfg.data.limit]
  return [r for r in records for _ in range(cfg.rollout.group_size)]


def write_rollouts(cfg, out: str, *, progress: bool = True) -> dict:
  """Runs the config's records through its policy and writes, under `out`: trajectories.jsonl
  (as each finishes; `trajectory.load_jsonl` reads it) with images/, transcripts.jsonl (in id
  order, with reward parts) and summary.json (`summarize`, with timings); returns the summary.
  The executor services answer /healthz before the model is built (a local one is started when
  `executor.urls` is empty)."""
  import tqdm

  from codevision_jax.execution.client import ExecutorClient
  from codevision_jax.runtime import run_setup
  from codevision_jax.sampling import trajectory as traj_lib

  check_config(cfg)
  os.makedirs(out, exist_ok=True)
  with executor_services(cfg.executor.urls, workers=cfg.executor.workers) as urls:
    records = config_records(cfg)
    tokenizer, model, settings = model_parts(cfg, out)
    policy = build_policy(cfg, model, tokenizer, rules=run_setup.mesh_rules(cfg.mesh))
    path = os.path.join(out, "trajectories.jsonl")
    open(path, "w").close()
    bar = tqdm.tqdm(total=len(records), desc="rollout", unit="traj", disable=not progress)

    def on_finish(traj):
      traj_lib.save_jsonl([traj], path, append=True)
      bar.update(1)

    async def go():
      async with ExecutorClient(urls) as client, judge(cfg) as j:
        return await rollout(
          policy,
          records,
          tokenizer=tokenizer,
          client=client,
          settings=settings,
          agent=agent_config(cfg),
          group_ids=[k // cfg.rollout.group_size for k in range(len(records))],
          judge=j,
          reward=reward_options(cfg),
          on_finish=on_finish,
        )

    ro = asyncio.run(go())
    bar.close()
  write_transcripts(os.path.join(out, "transcripts.jsonl"), tokenizer, ro.trajectories, ro.parts)
  summary = ro.summary()
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


# ---- the summary ---------------------------------------------------------------------------------

SUMMARY = {
  "trajectories": "how many",
  "with_ground_truth": "how many have a ground truth (accuracy and reward are over those)",
  "accuracy": "the share answered correctly (rule or judge); None without ground truth",
  "reward": "{part: mean} of the reward parts (`rl.scoring`), `score` the trained-on total",
  "format_rate": "the mean format reward",
  "tool_calls": "tool calls, all statuses",
  "tool_calls_per_trajectory": "tool calls per trajectory",
  "tool_use_rate": "the share of trajectories that called the tool",
  "tool_error_rate": "the share of tool calls that did not return ok (0 without calls)",
  "tool_status": "{status: calls}",
  "ops": "{operation: calls that performed it}, as the executor traced them",
  "turns": "mean assistant turns",
  "response_tokens": "mean tokens the policy sampled (None where not recorded)",
  "finish": "{finish reason: share of trajectories}",
  "judge_calls": "answers sent to the judge (where scoring statistics are known)",
  "judge_fallbacks": "of those, the judge gave no verdict: the rule's stands",
  "judge_too_long": "of those, the answer was too long to send",
  "kv_preemptions": "slots preempted for KV-cache pages and prefilled again (a paged cache, where "
  "the run's statistics are known; 0 with a dense cache)",
  "time": "{rollout_s, generation_s, waiting_on_tools_s, scoring_s, tool_call_s (mean), "
  "sampler_idle_fraction} where the run's timings are known",
}
"""The summary's keys and what each holds: RL's metrics (`metrics`), launch.rollout's
summary.json and the eval report's tables all use these names."""


@dataclasses.dataclass
class Outcome:
  """What the summary reads of one trajectory."""

  graded: bool  # the record has a ground truth
  correct: bool
  reward: dict | None  # the reward parts (rl.scoring)
  turns: int
  finish: str
  calls: list  # [(status, [operation names], latency_s)]
  response_tokens: int | None = None

  @classmethod
  def of(cls, traj: Trajectory, parts: dict | None) -> Outcome:
    """From a trajectory and its reward parts."""
    graded = traj.metadata.get("ground_truth") is not None and parts is not None
    return cls(
      graded,
      graded and bool(parts["correct"]),
      parts if graded else None,
      traj.num_turns,
      str(traj.finish_reason),
      [
        (str(c.status), sorted(ops_lib.core_ops(c.ops) | ops_lib.non_core_ops(c.ops)), c.latency_s)
        for c in traj.tool_calls
      ],
      int(sum(traj.policy_mask)),
    )

  @classmethod
  def of_record(cls, record: dict) -> Outcome:
    """From a transcript record (`rl.transcript.transcript`, a line of the eval's results)."""
    graded = record.get("correct") is not None
    return cls(
      graded,
      bool(record.get("correct")),
      record.get("reward") if graded else None,
      record["num_turns"],
      str(record["finish_reason"]),
      [(c["status"], list(c["ops"]), c["latency_s"]) for c in record["tool_calls"]],
      record.get("response_tokens"),
    )


def _mean(xs):
  xs = [x for x in xs if x is not None]
  return float(np.mean(xs)) if xs else None


def summarize(
  outcomes: Sequence[Outcome],
  *,
  scoring_stats: scoring.ScoringStats | None = None,
  agent_stats: agent_lib.AgentStats | None = None,
  scoring_s: float | None = None,
) -> dict:
  """The summary (`SUMMARY`'s keys) of a set of trajectories: accuracy and reward over those with
  a ground truth, the rest over all; the judge's counts with `scoring_stats`, `time` with
  `agent_stats`."""
  n = len(outcomes)
  graded = [o for o in outcomes if o.graded]
  calls = [c for o in outcomes for c in o.calls]
  parts = [o.reward for o in graded if o.reward]
  keys = [k for k in (parts[0] if parts else {}) if all(isinstance(p.get(k), (int, float)) for p in parts)]
  out = {
    "trajectories": n,
    "with_ground_truth": len(graded),
    "accuracy": _mean(float(o.correct) for o in graded),
    "reward": {k: _mean(p[k] for p in parts) for k in keys},
    "format_rate": _mean(p.get("fmt") for p in parts),
    "tool_calls": len(calls),
    "tool_calls_per_trajectory": len(calls) / n if n else None,
    "tool_use_rate": _mean(float(bool(o.calls)) for o in outcomes),
    "tool_error_rate": (sum(status != CallStatus.OK for status, _, _ in calls) / len(calls) if calls else 0.0),
    "tool_status": dict(collections.Counter(status for status, _, _ in calls)),
    "ops": dict(collections.Counter(op for _, ops, _ in calls for op in ops).most_common()),
    "turns": _mean(o.turns for o in outcomes),
    "response_tokens": _mean(o.response_tokens for o in outcomes),
    "finish": {k: v / n for k, v in collections.Counter(o.finish for o in outcomes).items()},
  }
  if scoring_stats is not None:
    out.update(
      judge_calls=scoring_stats.judged,
      judge_fallbacks=scoring_stats.judge_fallbacks,
      judge_too_long=scoring_stats.judge_too_long,
    )
  if agent_stats is not None:
    out["kv_preemptions"] = agent_stats.preemptions
    out["time"] = {
      "rollout_s": agent_stats.wall_s,
      "generation_s": agent_stats.decode_s + agent_stats.prefill_s,
      "waiting_on_tools_s": agent_stats.idle_s,
      "scoring_s": scoring_s or 0.0,
      "tool_call_s": _mean(latency for _, _, latency in calls),
      "sampler_idle_fraction": agent_stats.idle_fraction,
    }
  return out


def metrics(summary: dict, prefix: str) -> dict[str, float]:
  """The summary as flat scalar metrics named `<prefix>/<key>` (nested keys joined by "/":
  `rollout/reward/score`, `rollout/finish/answer`), without its `time` section and None values."""
  out = {}

  def walk(name, value):
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f"{name}/{k}", v)
    elif value is not None:
      out[name] = float(value)

  for key, value in summary.items():
    if key != "time":
      walk(f"{prefix}/{key}", value)
  return out
