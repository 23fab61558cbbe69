"""One GRPO round on CPU: where the time goes, and trajectories per second against a synchronous
reference in the same run.

    python -m benchmarks.rl_step [--prompts=8] [--group=4] [--slots=16] [--tool_turns=2]
        [--think=32] [--workers=2]

The tiny Qwen2.5-VL (random weights, float32) runs a whole round of `codevision_jax.rl.loop`:
rollouts through the agent loop against a real executor service (started here), scoring,
advantages, old and reference log-probs, the policy update and the hand-off to the sampler. A
random model does not call tools by itself, so each turn is shaped as in `benchmarks/agent.py`:
`--think` sampled tokens, then a teacher-forced `code_image_tool` call for `--tool_turns` turns and
an answer; the input images are 512-896 pixels a side, so the calls cost what real ones do. The reference runs the same round with every tool call awaited in turn: the call blocks
the event loop, so no slot decodes while one trajectory waits on its code (what verl's agent loop
does per sample). Both rounds run after a warm-up round that compiles every shape.

Prints the time split of each round (generation, waiting on tools, scoring, log-probs, update),
the sampler's idle fraction (target: under 10% of the round's rollout), and trajectories per
second with the ratio against the reference.
"""

import asyncio
import concurrent.futures
import tempfile
import time

from absl import app, flags

from benchmarks.shaped_policy import ShapedPolicy
from codevision_jax.execution.client import ExecutorClient
from codevision_jax.rl import loop
from codevision_jax.runtime import run_setup
from configs import tiny_rl
from executor.local import local_service

FLAGS = flags.FLAGS
flags.DEFINE_integer("prompts", 8, "prompts per round")
flags.DEFINE_integer("group", 4, "trajectories per prompt")
flags.DEFINE_integer("slots", 16, "trajectories decoded together")
flags.DEFINE_integer("tool_turns", 2, "tool calls per trajectory")
flags.DEFINE_integer("think", 32, "tokens sampled per turn")
flags.DEFINE_integer("workers", 2, "workers of the local executor service")


class SerialClient:
  """Runs each call to completion before returning control: the event loop (and so every other
  trajectory's decoding) waits, as when each sample's tool calls are awaited in turn."""

  def __init__(self, urls):
    self.urls = urls
    self.pool = concurrent.futures.ThreadPoolExecutor(1)
    self.loop = asyncio.new_event_loop()
    self.client = ExecutorClient(urls)
    self.pool.submit(self.loop.run_until_complete, self.client.__aenter__()).result()

  async def execute(self, *args, **kwargs):
    return self.pool.submit(self.loop.run_until_complete,
                            self.client.execute(*args, **kwargs)).result()

  def close(self):
    self.pool.submit(self.loop.run_until_complete, self.client.__aexit__(None, None, None)).result()
    self.pool.shutdown()
    self.loop.close()


def one_round(run, url: str, index: int, serial: bool) -> dict:
  records = [run.records[i] for i in range(index * FLAGS.prompts, (index + 1) * FLAGS.prompts)]

  async def rollout():
    if serial:
      client = SerialClient([url])
      try:
        return await loop.rollout(run, records, samples=FLAGS.group, seed=index, client=client)
      finally:
        client.close()
    async with ExecutorClient([url]) as client:
      return await loop.rollout(run, records, samples=FLAGS.group, seed=index, client=client)

  t0 = time.perf_counter()
  ro = asyncio.run(rollout())
  t1 = time.perf_counter()
  run.state, m = loop.learn(run, ro)
  loop.hand_to_sampler(run, run.state["params"])
  t2 = time.perf_counter()
  st = ro.agent_stats
  return {"round_s": t2 - t0, "rollout_s": t1 - t0, "generation_s": st.decode_s + st.prefill_s,
          "waiting_on_tools_s": st.idle_s, "scoring_s": ro.scoring_s, "logprobs_s": m["time/logprobs_s"],
          "update_s": m["time/update_s"], "idle_fraction": st.idle_s / max(t1 - t0, 1e-9),
          "trajectories": len(ro.trajectories),
          "tool_calls": sum(len(t.tool_calls) for t in ro.trajectories),
          "tool_latency_sum_s": sum(c.latency_s for t in ro.trajectories for c in t.tool_calls)}


def main(argv):
  del argv
  cfg = tiny_rl.get_config()
  cfg.rollout.prompts, cfg.rollout.group_size, cfg.rollout.slots = FLAGS.prompts, FLAGS.group, FLAGS.slots
  cfg.algo.mini_batch_prompts = FLAGS.prompts // 2
  cfg.data.synthetic_size = 4 * FLAGS.prompts
  cfg.data.synthetic_p_small = 1.0  # Cards small on 512-896 px canvases: tool calls of real cost.
  cfg.agent.max_turns = FLAGS.tool_turns + 2
  run = loop.build(cfg, tempfile.mkdtemp(prefix="cvj-rl-bench-"))
  model = run_setup.build_model(cfg.model, run.tokenizer, seed=cfg.seed)
  run.policy = ShapedPolicy(run.tokenizer, model, think=FLAGS.think, tool_turns=FLAGS.tool_turns,
                            num_slots=FLAGS.slots, capacity=cfg.agent.max_total_tokens,
                            chunk=cfg.rollout.chunk, steps_per_call=cfg.rollout.steps_per_call,
                            temperature=1.0)
  loop.hand_to_sampler(run, run.state["params"])
  with local_service(workers=FLAGS.workers) as service:
    one_round(run, service.url, 0, serial=False)  # Warm-up: compiles every shape.
    rounds = {"overlapped (ours)": one_round(run, service.url, 1, serial=False),
              "serial tool calls (reference)": one_round(run, service.url, 2, serial=True)}
  print(f"one GRPO round, tiny model on CPU: {FLAGS.prompts} prompts x {FLAGS.group} samples, "
        f"{FLAGS.slots} slots, {FLAGS.tool_turns} tool calls and {FLAGS.think} sampled tokens per turn")
  keys = ("round_s", "rollout_s", "generation_s", "waiting_on_tools_s", "tool_latency_sum_s",
          "scoring_s", "logprobs_s", "update_s", "tool_calls")
  print(f"{'':31s}" + "".join(f"{k:>19s}" for k in keys))
  for name, r in rounds.items():
    print(f"{name:31s}" + "".join(f"{r[k]:19.2f}" for k in keys))
  print("(waiting_on_tools_s: no slot had anything to decode; with serial calls the decoder waits "
        "through every call's latency instead)")
  ours, ref = rounds["overlapped (ours)"], rounds["serial tool calls (reference)"]
  tps_ours, tps_ref = ours["trajectories"] / ours["round_s"], ref["trajectories"] / ref["round_s"]
  print(f"trajectories/s: {tps_ours:.2f} (ours) vs {tps_ref:.2f} (serial tool calls): "
        f"{tps_ours / tps_ref:.2f}x")
  print(f"sampler idle on tools: {ours['idle_fraction']:.1%} of the rollout (target under 10%)")


if __name__ == "__main__":
  app.run(main)
