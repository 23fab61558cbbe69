"""python -m launch.rollout --config=configs/tiny_rollout.py --out=DIR

Runs the agent loop over a data set (RL or eval records, or SFT records' prompts: JSON, JSONL or
Parquet) and writes, under `<out>`:

  transcripts.jsonl   per trajectory: the decoded text of every turn, each tool call's code,
                      stdout, error and result image, the final answer and, where the record has
                      ground truth, whether it is correct (the answer rule) and the reward parts
  trajectories.jsonl  the token ids, policy mask and log-probs (trajectory.load_jsonl reads them)
  images/             every input and tool image, <trajectory id>_<k>.png
  summary.json        accuracy, reward, tool statistics (calls, statuses, operations, latency),
                      finish reasons and the decoder's timing

The executor services must answer /healthz before the model is built. The config names the
model, data, sampling, agent limits and executor (see `configs/tiny_rollout.py`; any field can be
overridden, e.g. `--config.model.path=/ckpt/model --config.data.source=files
--config.data.paths=/data/eval.parquet
--config.executor.urls=http://exec-0:8700,http://exec-1:8700`).
Its defaults run the tiny Qwen2.5-VL with random weights on synthetic tasks with a local executor
service, on a laptop CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time

from absl import flags
from ml_collections import config_flags

from launch import errors, shell

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_rollout.py", "Config file.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: a new directory under /tmp).")
flags.DEFINE_bool("orbax_logs", False, "Show the INFO log lines of Orbax (checkpoint "
                  "internals) and of JAX's backend probing.")


def build_policy_parts(cfg, workdir: str):
  """(model, tokenizer, image settings) of the config's model; a tiny tokenizer, if one is
  needed, is built under `workdir`."""
  from codevision_jax.runtime import run_setup
  tokenizer, model, settings = run_setup.model_parts(
      cfg, workdir, run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh))
  return model, tokenizer, settings


def load_records(cfg) -> list:
  """The data set's records, the first `data.limit` of them (0: all), each `sampling.samples`
  times in a row."""
  from codevision_jax.runtime import run_setup
  source = run_setup.conversation_source(cfg.data, kind="rl")
  records = [source[i] for i in range(len(source))]
  if cfg.data.limit:
    records = records[:cfg.data.limit]
  return [r for r in records for _ in range(cfg.sampling.samples)]


def summarize(trajectories, stats, parts: list[dict]) -> dict:
  """Accuracy and reward over the trajectories whose record has ground truth; tool statistics
  over all of them; finish reasons and timings."""
  n = len(trajectories)
  calls = [c for t in trajectories for c in t.tool_calls]
  graded = [p for t, p in zip(trajectories, parts) if t.metadata.get("ground_truth") is not None]
  ops = collections.Counter(op.get("op") for c in calls for op in c.ops
                            if isinstance(op, dict) and op.get("op"))
  mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
  return {
      "trajectories": n,
      "with_ground_truth": len(graded),
      "accuracy": mean([p["correct"] for p in graded]),
      "reward": {k: mean([p[k] for p in graded]) for k in (graded[0] if graded else {})},
      "finish_reasons": dict(collections.Counter(str(t.finish_reason) for t in trajectories)),
      "mean_turns": mean([t.num_turns for t in trajectories]),
      "tools": {
          "calls": len(calls),
          "calls_per_trajectory": len(calls) / max(n, 1),
          "trajectories_with_calls": sum(bool(t.tool_calls) for t in trajectories),
          "status": dict(collections.Counter(str(c.status) for c in calls)),
          "error_fraction": mean([c.status != "ok" for c in calls]),
          "operations": dict(ops.most_common()),
          "mean_latency_s": mean([c.latency_s for c in calls]),
      },
      "sampled_tokens": sum(sum(t.policy_mask) for t in trajectories),
      "wall_s": stats.wall_s, "decode_s": stats.decode_s, "prefill_s": stats.prefill_s,
      "idle_s": stats.idle_s, "idle_fraction": stats.idle_fraction,
  }


def rollout(cfg, out: str, *, progress: bool = True) -> dict:
  """Runs the agent over the config's records and writes the transcripts, trajectories and
  summary; returns the summary."""
  import tqdm

  from codevision_jax.execution.client import ExecutorClient, healthy_services
  from codevision_jax.rl import scoring, transcript
  from codevision_jax.sampling import agent as agent_lib
  from codevision_jax.sampling import environment
  from codevision_jax.sampling import trajectory as traj_lib
  from codevision_jax.sampling.policy import ModelPolicy
  from executor.local import local_service

  os.makedirs(out, exist_ok=True)
  config = agent_lib.AgentConfig(**cfg.agent.to_dict())
  with contextlib.ExitStack() as stack:
    urls = [u for u in cfg.executor.urls.split(",") if u] or [
        stack.enter_context(local_service(workers=cfg.executor.workers)).url]
    urls = asyncio.run(healthy_services(urls))  # Before minutes of model loading.
    records = load_records(cfg)
    model, tokenizer, settings = build_policy_parts(cfg, out)
    s = cfg.sampling
    policy = ModelPolicy(model, environment.stop_ids(tokenizer), num_slots=s.slots,
                         capacity=config.max_total_tokens, chunk=s.chunk,
                         steps_per_call=s.steps_per_call, temperature=s.temperature, top_k=s.top_k,
                         top_p=s.top_p, seed=s.seed, yield_ids=environment.yield_ids(tokenizer))
    path = os.path.join(out, "trajectories.jsonl")
    open(path, "w").close()
    bar = tqdm.tqdm(total=len(records), desc="rollout", unit="traj", disable=not progress)

    def on_finish(traj):
      traj_lib.save_jsonl([traj], path, append=True)
      bar.update(1)

    async def go():
      async with ExecutorClient(urls) as client:
        return await agent_lib.run_agent(policy, records, tokenizer, client, settings, config,
                                         on_finish=on_finish)

    trajectories, stats = asyncio.run(go())
    bar.close()
  trajectories = sorted(trajectories, key=lambda t: t.id)
  groups = [t.id // cfg.sampling.samples for t in trajectories]
  _, parts, _ = asyncio.run(scoring.score(trajectories, groups, tokenizer))
  with open(os.path.join(out, "transcripts.jsonl"), "w", encoding="utf-8") as f:
    for traj, p in zip(trajectories, parts):
      f.write(json.dumps(transcript.transcript(tokenizer, traj, p), ensure_ascii=False) + "\n")
  summary = summarize(trajectories, stats, parts)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  from codevision_jax.runtime import run_setup
  run_setup.quiet_orbax(flags.FLAGS.orbax_logs)
  out = _OUT.value or os.path.join("/tmp", f"cvj-rollout-{int(time.time())}")
  s = rollout(_CONFIG.value, out)
  tools = s["tools"]
  accuracy = "no ground truth" if s["accuracy"] is None else (
      f"{s['accuracy']:.3f} over {s['with_ground_truth']} with ground truth, "
      f"mean reward {s['reward']['score']:.3f}")
  print(f"== done: {s['trajectories']} trajectories in {s['wall_s']:.1f} s\n"
        f"   accuracy: {accuracy}\n"
        f"   tool calls: {tools['calls']} ({tools['calls_per_trajectory']:.2f} per trajectory), "
        f"status {tools['status']}\n"
        f"   finish reasons: {s['finish_reasons']}\n"
        f"   transcripts (every turn's text, the calls, answers): "
        f"{os.path.join(out, 'transcripts.jsonl')}\n"
        f"   trajectories (tokens, log-probs): {os.path.join(out, 'trajectories.jsonl')}\n"
        f"   summary: {os.path.join(out, 'summary.json')}\n"
        f"   read them in a browser after {shell.python_m('launch.view', f'--rollouts={out}')}")


if __name__ == "__main__":
  errors.run(main, default_config="configs/tiny_rollout.py")
