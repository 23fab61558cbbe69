"""python -m launch.rollout --checkpoint=DIR --data=FILE --executor=URL --out=DIR

Runs the agent loop over a data file (SFT, RL or eval records: JSON, JSONL or Parquet) and writes
the trajectories to `<out>/trajectories.jsonl` (images under `<out>/images/`), with a progress bar
and a summary (finish reasons, tool calls and errors, decoder idle fraction) in
`<out>/summary.json`.

Without --checkpoint it uses the tiny Qwen2.5-VL with random weights and the tiny tokenizer;
without --data, `--num_synthetic` synthetic tasks; without --executor, it starts a local executor
service for the run. So `python -m launch.rollout --out=/tmp/rollout` runs on a laptop CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "", "HF checkpoint directory (default: random tiny model)")
flags.DEFINE_string("data", "", "records file (default: synthetic tasks)")
flags.DEFINE_integer("num_synthetic", 8, "synthetic tasks when --data is not given")
flags.DEFINE_string("executor", "", "executor service URL(s), comma-separated (default: start one)")
flags.DEFINE_string("out", None, "output directory", required=False)
flags.DEFINE_integer("limit", 0, "use only the first N records (0: all)")
flags.DEFINE_integer("samples", 1, "trajectories per record")
flags.DEFINE_integer("slots", 8, "trajectories in flight")
flags.DEFINE_float("temperature", 1.0, "sampling temperature (0: greedy)")
flags.DEFINE_integer("top_k", 0, "top-k filter (0: off)")
flags.DEFINE_float("top_p", 1.0, "top-p filter (1: off)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_integer("max_turns", 12, "assistant turns per trajectory")
flags.DEFINE_integer("max_total_tokens", 4096, "prompt + response tokens per trajectory")
flags.DEFINE_integer("max_tool_response_tokens", 10000, "tokens of one tool response")
flags.DEFINE_integer("max_images", 16, "images per trajectory")
flags.DEFINE_float("tool_timeout_s", 10.0, "CPU seconds per tool call")
flags.DEFINE_integer("max_pixels", 0, "model pixel budget per image (0: the checkpoint's)")
flags.DEFINE_integer("executor_workers", 2, "workers of the local executor service")


def load_policy_parts(checkpoint: str, workdir: str):
  """(model, tokenizer, image settings) from a checkpoint, or the random tiny model."""
  from codevision_jax.models import build_model, presets
  from codevision_jax.processing import image as image_lib
  from codevision_jax.processing import tokenizer as tok_lib
  if checkpoint:
    from codevision_jax.checkpoint.hf_load import load_hf
    model = load_hf(checkpoint, dtype="float32")
    tokenizer = tok_lib.load_tokenizer(checkpoint)
    if os.path.exists(os.path.join(checkpoint, "preprocessor_config.json")):
      settings = image_lib.ImageSettings.from_preprocessor_config(checkpoint)
    else:
      settings = image_lib.ImageSettings.for_model_type(model.config.model_type)
    return model, tokenizer, settings
  tokenizer = tok_lib.load_tokenizer(tok_lib.build_tiny_tokenizer(os.path.join(workdir, "tokenizer")))
  config = presets.qwen2_5_vl_tiny().replace(**{
      name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
          ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
          ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))})
  settings = image_lib.ImageSettings.for_model_type("qwen2_5_vl", max_pixels=28 * 28 * 64)
  return build_model(config, seed=0), tokenizer, settings


def load_records(data: str, num_synthetic: int, limit: int, samples: int):
  from codevision_jax.data import readers, synthetic
  records = readers.read_rl_records(data) if data else synthetic.generate(num_synthetic, seed=0)
  if limit:
    records = records[:limit]
  return [r for r in records for _ in range(samples)]


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


def rollout(*, out: str, checkpoint: str = "", data: str = "", executor: str = "",
            num_synthetic: int = 8, limit: int = 0, samples: int = 1, slots: int = 8,
            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
            agent_config=None, max_pixels: int = 0, executor_workers: int = 2,
            progress: bool = True) -> dict:
  """Runs the agent over the records and writes the trajectories; returns the summary."""
  import dataclasses

  import tqdm

  from codevision_jax.sampling import agent as agent_lib
  from codevision_jax.sampling import trajectory as traj_lib
  from codevision_jax.sampling.policy import ModelPolicy
  from codevision_jax.tools.executor_client import ExecutorClient
  from executor.testing import running_service

  os.makedirs(out, exist_ok=True)
  config = agent_config or agent_lib.AgentConfig()
  model, tokenizer, settings = load_policy_parts(checkpoint, out)
  if max_pixels:
    settings = dataclasses.replace(settings, max_pixels=max_pixels)
  records = load_records(data, num_synthetic, limit, samples)
  policy = ModelPolicy(model, agent_lib.stop_ids(tokenizer), num_slots=slots,
                       capacity=config.max_total_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed)
  path = os.path.join(out, "trajectories.jsonl")
  open(path, "w").close()
  bar = tqdm.tqdm(total=len(records), desc="rollout", unit="traj", disable=not progress)

  def on_finish(traj):
    traj_lib.save_jsonl([traj], path, append=True)
    bar.update(1)

  with contextlib.ExitStack() as stack:
    urls = executor.split(",") if executor else [
        stack.enter_context(running_service(workers=executor_workers)).url]

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
  from codevision_jax.sampling import agent as agent_lib
  out = FLAGS.out or os.path.join("/tmp", f"cvj-rollout-{int(time.time())}")
  config = agent_lib.AgentConfig(
      max_turns=FLAGS.max_turns, max_total_tokens=FLAGS.max_total_tokens,
      max_tool_response_tokens=FLAGS.max_tool_response_tokens, max_images=FLAGS.max_images,
      tool_timeout_s=FLAGS.tool_timeout_s)
  summary = rollout(out=out, checkpoint=FLAGS.checkpoint, data=FLAGS.data, executor=FLAGS.executor,
                    num_synthetic=FLAGS.num_synthetic, limit=FLAGS.limit, samples=FLAGS.samples,
                    slots=FLAGS.slots, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                    top_p=FLAGS.top_p, seed=FLAGS.seed, agent_config=config,
                    max_pixels=FLAGS.max_pixels, executor_workers=FLAGS.executor_workers)
  print(json.dumps(summary, indent=2))
  print(f"trajectories: {os.path.join(out, 'trajectories.jsonl')}")


if __name__ == "__main__":
  app.run(main)
