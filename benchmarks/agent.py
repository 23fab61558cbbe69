"""Agent loop on CPU: how much of the wall time the decoder idles waiting on the code executor.

    python -m benchmarks.agent [--trajectories=64] [--in_flight=32] [--tool_turns=3] [--think=48]
        [--workers=2] [--executor_url=URL] [--image_sides=512,2048]

The tiny Qwen2.5-VL (random weights, float32) runs the real agent loop against a real executor
service (started locally unless --executor_url is given) with `--in_flight` trajectories in flight. A
random model does not call tools by itself, so each turn is scripted in shape: the model samples
`--think` tokens (sampling at temperature 1, stop tokens and `<tool_call>` banned), then the turn's end is
teacher-forced: a `code_image_tool` call (rotate, crop or flip of image 0 or the latest tool
output) for the first `--tool_turns` turns, an answer after that. Everything else is the
production path: parsing, executor calls as asyncio tasks, tool images resized, preprocessed,
encoded and appended by chunked prefill, slots refilled from the queue.

The input image of each task is resized to a side drawn log-uniform in `--image_sides` (default
512-2048 pixels, as real inputs are; the tool's rotations and half-crops of them give results
of varied sizes), so decoding each result PNG and preparing it for the model costs what it does
in a real rollout.

Prints the decoder idle fraction (time with no slot to decode because every slot in flight waits
on a tool call, over the wall time; target under 10%), the time the decoder stalled on host work
(the wall time neither decoding nor idle: starting prompts, appending tool turns, and whatever
host work runs inline in the loop), and the decode, prefill and tool-latency figures. The
reference in the same run is the time the tool calls took in total (sum of latencies), against
which the idle time shows how much of it was hidden behind decoding. A warm-up runs the same
trajectories first, so the timed run compiles nothing.
"""

import asyncio
import statistics
import tempfile

import numpy as np
from absl import app, flags

from codevision_jax.data import synthetic
from codevision_jax.data.records import load_image, png_bytes
from codevision_jax.sampling import agent as agent_lib
from codevision_jax.execution.client import ExecutorClient
from executor.local import local_service
from benchmarks.shaped_policy import ShapedPolicy
from codevision_jax.rl import rollouts
from configs import tiny_rollout

FLAGS = flags.FLAGS
flags.DEFINE_integer("trajectories", 64, "trajectories to run")
flags.DEFINE_integer("in_flight", 32, "trajectories in flight (slots)")
flags.DEFINE_integer("tool_turns", 3, "tool calls per trajectory")
flags.DEFINE_integer("think", 48, "tokens the model samples per turn")
flags.DEFINE_integer("workers", 2, "workers of the local executor service")
flags.DEFINE_string("executor_url", "", "executor URL (default: start one)")
flags.DEFINE_string("image_sides", "512,2048", "input images' sides, log-uniform in [lo, hi] ('': as generated)")


def resized(records, sides: str, seed: int = 0):
  """The records with their input image (the first; the rest are the expert trajectory's tool
  results, which the agent does not read) resized to a side drawn log-uniform in `sides`."""
  if not sides:
    return records
  lo, hi = (int(x) for x in sides.split(","))
  rng = np.random.default_rng(seed)
  for r in records:
    side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    r.images = [png_bytes(load_image(r.images[0]).resize((side, side)))] + r.images[1:]
  return records


def main(argv):
  del argv
  tok, model, settings = rollouts.model_parts(tiny_rollout.get_config(), tempfile.mkdtemp(prefix="cvj-bench-"))
  records = resized(synthetic.generate(FLAGS.trajectories, seed=0), FLAGS.image_sides)
  config = agent_lib.AgentConfig(max_total_tokens=4096)

  def run_once(url, n):
    policy = ShapedPolicy(
      tok,
      model,
      think=FLAGS.think,
      tool_turns=FLAGS.tool_turns,
      num_slots=FLAGS.in_flight,
      capacity=config.max_total_tokens,
      chunk=128,
      steps_per_call=16,
      temperature=1.0,
    )

    async def go():
      async with ExecutorClient(url) as client:
        return await agent_lib.run_agent(policy, records[:n], tok, client, settings, config)

    return asyncio.run(go())

  def bench(url):
    run_once(url, FLAGS.trajectories)  # Warm-up: the same run compiles every shape it meets
    # (cache lengths, vision buckets, batched appends of 1, 2, 4, ... slots).
    return run_once(url, FLAGS.trajectories)

  if FLAGS.executor_url:
    trajs, stats = bench(FLAGS.executor_url)
  else:
    with local_service(workers=FLAGS.workers) as service:
      trajs, stats = bench(service.url)
  calls = [c for t in trajs for c in t.tool_calls]
  latencies = [c.latency_s for c in calls]
  reasons = {str(r): sum(t.finish_reason == r for t in trajs) for r in {t.finish_reason for t in trajs}}
  sampled = sum(sum(t.policy_mask) for t in trajs)
  print(
    f"trajectories {len(trajs)} ({reasons}), slots {FLAGS.in_flight}, tool calls {len(calls)} "
    f"({sum(c.status == 'ok' for c in calls)} ok)"
  )
  print(
    f"wall {stats.wall_s:.2f} s: decode {stats.decode_s:.2f} s in {stats.decode_calls} calls, "
    f"prefill {stats.prefill_s:.2f} s, idle {stats.idle_s:.2f} s"
  )
  print(
    f"tool latency median {statistics.median(latencies) * 1e3:.1f} ms, "
    f"p90 {np.percentile(latencies, 90) * 1e3:.1f} ms, sum {sum(latencies):.2f} s"
  )
  print(f"policy tokens (sampled + forced turn ends) {sampled}, {sampled / stats.wall_s:.0f}/s")
  print(
    f"decoder idle fraction: {stats.idle_fraction:.3f} "
    f"(idle {stats.idle_s:.2f} s of the {sum(latencies):.2f} s of tool calls)"
  )
  stalled = stats.wall_s - stats.decode_s - stats.idle_s
  print(f"decoder stalled on host work: {stalled:.2f} s ({stalled / stats.wall_s:.1%} of the wall time)")


if __name__ == "__main__":
  app.run(main)
