"""python -m launch.rollout --config=configs/tiny_rollout.py --out=DIR

Runs the agent loop over a data set (RL or eval records, or SFT records' prompts: JSON, JSONL or
Parquet) and writes the trajectories to `<out>/trajectories.jsonl` (images under
`<out>/images/`), with a progress bar and a summary (finish reasons, tool calls and errors,
decoder idle fraction) in `<out>/summary.json`.

The config names the model, data, sampling, agent limits and executor (see
`configs/tiny_rollout.py`; any field can be overridden, e.g. `--config.model.path=/ckpt/model
--config.data.source=files --config.data.paths=/data/eval.parquet
--config.executor.urls=http://exec-0:8700,http://exec-1:8700`). Its defaults run the tiny
Qwen2.5-VL with random weights on synthetic tasks with a local executor service, on a laptop CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_rollout.py", "Config file.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: a new directory under /tmp).")


def build_policy_parts(cfg, workdir: str):
  """(model, tokenizer, image settings) of the config's model; a tiny tokenizer, if one is
  needed, is built under `workdir`."""
  from codevision_jax.train import run_setup
  tokenizer, model, settings = run_setup.model_parts(
      cfg, workdir, run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh))
  return model, tokenizer, settings


def load_records(cfg) -> list:
  """The data set's records, the first `data.limit` of them (0: all), each `sampling.samples`
  times in a row."""
  from codevision_jax.train import run_setup
  source = run_setup.conversation_source(cfg.data, kind="rl")
  records = [source[i] for i in range(len(source))]
  if cfg.data.limit:
    records = records[:cfg.data.limit]
  return [r for r in records for _ in range(cfg.sampling.samples)]


def summarize(trajectories, stats) -> dict:
  calls = [c for t in trajectories for c in t.tool_calls]
  return {
      "trajectories": len(trajectories),
      "finish_reasons": dict(collections.Counter(t.finish_reason for t in trajectories)),
      "tool_calls": len(calls),
      "tool_call_status": dict(collections.Counter(c.status for c in calls)),
      "mean_turns": sum(t.num_turns for t in trajectories) / max(len(trajectories), 1),
      "sampled_tokens": sum(sum(t.policy_mask) for t in trajectories),
      "wall_s": stats.wall_s, "decode_s": stats.decode_s, "prefill_s": stats.prefill_s,
      "idle_s": stats.idle_s, "idle_fraction": stats.idle_fraction,
  }


def rollout(cfg, out: str, *, progress: bool = True) -> dict:
  """Runs the agent over the config's records and writes the trajectories; returns the summary."""
  import tqdm

  from codevision_jax.sampling import agent as agent_lib
  from codevision_jax.sampling import environment
  from codevision_jax.sampling import trajectory as traj_lib
  from codevision_jax.sampling.policy import ModelPolicy
  from codevision_jax.execution.client import ExecutorClient
  from executor.local import local_service

  os.makedirs(out, exist_ok=True)
  config = agent_lib.AgentConfig(**cfg.agent.to_dict())
  model, tokenizer, settings = build_policy_parts(cfg, out)
  records = load_records(cfg)
  s = cfg.sampling
  policy = ModelPolicy(model, environment.stop_ids(tokenizer), num_slots=s.slots,
                       capacity=config.max_total_tokens, chunk=s.chunk,
                       steps_per_call=s.steps_per_call, temperature=s.temperature, top_k=s.top_k,
                       top_p=s.top_p, seed=s.seed)
  path = os.path.join(out, "trajectories.jsonl")
  open(path, "w").close()
  bar = tqdm.tqdm(total=len(records), desc="rollout", unit="traj", disable=not progress)

  def on_finish(traj):
    traj_lib.save_jsonl([traj], path, append=True)
    bar.update(1)

  with contextlib.ExitStack() as stack:
    urls = [u for u in cfg.executor.urls.split(",") if u] or [
        stack.enter_context(local_service(workers=cfg.executor.workers)).url]

    async def go():
      async with ExecutorClient(urls) as client:
        return await agent_lib.run_agent(policy, records, tokenizer, client, settings, config,
                                         on_finish=on_finish)

    trajectories, stats = asyncio.run(go())
  bar.close()
  summary = summarize(trajectories, stats)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  del argv
  out = _OUT.value or os.path.join("/tmp", f"cvj-rollout-{int(time.time())}")
  summary = rollout(_CONFIG.value, out)
  print(json.dumps(summary, indent=2))
  print(f"trajectories: {os.path.join(out, 'trajectories.jsonl')}")


if __name__ == "__main__":
  app.run(main)
