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

Then the learner alone, on the last round's trajectories from the same parameters, after a
warm-up that compiles its shapes: `rl.learner` (trajectories packed several to a row, one fused
old + reference pass, donated accumulation on device) against the learner it replaced
(benchmarks/plain_learner.py: one trajectory per row, separate passes read back to the host,
gradients summed outside jit): seconds, microbatches, the real-token share, the ratio, and how
far their parameters differ. And the planning alone at the 7B recipe's sizes
(configs/qwen2_5_vl_7b_rl.py: 8 rows of up to 32k tokens, mini-batches of 256 trajectories)
on a synthetic length distribution (tokens log-uniform 2k-32k, 1-6 images): real-token share
and microbatches of one trajectory per row against packed rows, how many trajectories the
recipe's train.patch_budget would have dropped before the budget was sized from the rollout
limits, and how many programs a scan over each mini-batch's microbatches would compile (one per
count and shape) against the learner's one accumulation per shape.
"""

import asyncio
import concurrent.futures
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.plain_learner import learn_plain
from benchmarks.shaped_policy import ShapedPolicy
from codevision_jax.execution.client import ExecutorClient
from codevision_jax.models import presets
from codevision_jax.processing import image as image_lib
from codevision_jax.rl import batch as batch_lib
from codevision_jax.rl import learner, loop
from codevision_jax.runtime import run_setup
from configs import qwen2_5_vl_7b_rl, tiny_rl
from executor.local import local_service

FLAGS = flags.FLAGS
flags.DEFINE_integer("prompts", 8, "prompts per round")
flags.DEFINE_integer("group", 4, "trajectories per prompt")
flags.DEFINE_integer("slots", 16, "trajectories decoded together")
flags.DEFINE_integer("tool_turns", 2, "tool calls per trajectory")
flags.DEFINE_integer("think", 32, "tokens sampled per turn")
flags.DEFINE_integer("workers", 2, "workers of the local executor service")
flags.DEFINE_bool(
  "learner_only",
  False,
  "only the learner comparison (on expert trajectories of "
  "synthetic tasks, no rollouts) and the planning at the 7B recipe's sizes",
)


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
    return self.pool.submit(self.loop.run_until_complete, self.client.execute(*args, **kwargs)).result()

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
  return {
    "ro": ro,
    "round_s": t2 - t0,
    "rollout_s": t1 - t0,
    "generation_s": st.decode_s + st.prefill_s,
    "waiting_on_tools_s": st.idle_s,
    "scoring_s": ro.scoring_s,
    "logprobs_s": m["time/logprobs_s"],
    "update_s": m["time/update_s"],
    "idle_fraction": st.idle_s / max(t1 - t0, 1e-9),
    "trajectories": len(ro.trajectories),
    "tool_calls": sum(len(t.tool_calls) for t in ro.trajectories),
    "tool_latency_sum_s": sum(c.latency_s for t in ro.trajectories for c in t.tool_calls),
  }


def learn_fused(run, ro):
  t0 = time.perf_counter()
  state, m = loop.learn(run, ro)
  jax.block_until_ready(state)
  return state, {
    "seconds": time.perf_counter() - t0,
    "real_token_share": m["learn/real_token_share"],
    "microbatches": m["learn/microbatches"],
  }


def compare_learners(run, ro) -> None:
  """Both learners on `ro` from the same parameters, each after a warm-up call."""
  initial = jax.device_get(run.state)
  rows, params = {}, {}
  for name, fn in (("plain, a trajectory a row (reference)", learn_plain), ("rl.learner, packed (ours)", learn_fused)):
    for _ in range(2):  # The first compiles.
      run.state = jax.device_put(initial, run.state_sh)
      state, rows[name] = fn(run, ro)
    params[name] = jax.device_get(state["params"])
  run.state = state
  print(f"learner alone, {len(ro.trajectories)} trajectories:")
  print(f"{'':40s}{'seconds':>10s}{'microbatches':>14s}{'real tokens':>13s}")
  for name, r in rows.items():
    print(f"{name:40s}{r['seconds']:10.2f}{r['microbatches']:14.0f}{r['real_token_share']:13.1%}")
  ref, ours = rows.values()
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), *params.values())))
  print(f"learner speed-up: {ref['seconds'] / ours['seconds']:.2f}x; parameters differ by at most {diff:.1e} (float32)")


def plan_at_7b_sizes(seed: int = 0, minibatches: int = 8) -> None:
  """Planning alone at the 7B recipe's geometry (see the module docstring)."""
  cfg = qwen2_5_vl_7b_rl.get_config()
  settings = image_lib.ImageSettings(min_pixels=56 * 56, max_pixels=cfg.data.max_pixels)
  mc = presets.preset("qwen2_5_vl_7b")
  geometry = learner.learner_geometry(cfg, mc, settings, shards=8)
  budgets = learner.patch_budgets(cfg, mc, settings, shards=8)
  before = batch_lib.Geometry(
    geometry.buckets, geometry.rows, cfg.train.patch_budget, cfg.train.max_images, geometry.max_image_patches
  )
  rng = np.random.default_rng(seed)
  n = minibatches * cfg.algo.mini_batch_prompts * cfg.rollout.group_size
  tokens = np.exp(rng.uniform(np.log(2048), np.log(32768), n)).astype(np.int64)
  image_tokens = [np.exp(rng.uniform(np.log(256), np.log(8192), rng.integers(1, 7))).astype(np.int64) for _ in range(n)]
  image_tokens = [np.minimum(t, int(0.8 * m) // len(t)) for t, m in zip(image_tokens, tokens)]
  sizes = np.array([[m, 4 * t.sum(), len(t)] for m, t in zip(tokens, image_tokens)], np.int64)
  per = n // minibatches
  kept = before.fits(sizes)

  def plan(g, packing, ladder=()):
    return [
      p
      for b in range(minibatches)
      for p in batch_lib.plan_microbatches(
        [i for i in range(b * per, (b + 1) * per) if g.fits(sizes[i])[0]], sizes, g, packing, ladder
      )
    ]

  plans = {
    "a trajectory a row, train.patch_budget (before)": plan(before, "none"),
    "packed rows, patch budgets (rl.learner)": plan(geometry, "auto", budgets),
  }
  print(
    f"planning at the 7B recipe's sizes: {minibatches} mini-batches of {per} trajectories, "
    f"{geometry.rows} rows, buckets {geometry.buckets}; patch budgets {budgets} "
    f"(train.patch_budget {cfg.train.patch_budget:,})"
  )
  print(
    f"{'':52s}{'trajectories':>13s}{'microbatches':>14s}{'token slots':>13s}{'real tokens':>13s}{'real patches':>14s}"
  )
  slots = {}
  for name, ps in plans.items():
    real, slots[name] = batch_lib.token_slots(ps, sizes, geometry.rows)
    budget = sum(p.patch_budget for p in ps)
    patches = sum(int(sizes[i, 1]) for p in ps for i in p.members)
    print(
      f"{name:52s}{sum(len(p.members) for p in ps):13d}{len(ps):14d}{slots[name]:13,d}"
      f"{real / slots[name]:13.1%}{patches / budget:14.1%}"
    )
  ours = plans["packed rows, patch budgets (rl.learner)"]
  shapes = {(p.bucket, p.patch_budget) for p in ours}
  scans, scan_slots = set(), 0  # A scan over a mini-batch's microbatches: one shape for all of them.
  for b in range(minibatches):
    mine = [p for p in ours if min(p.members) // per == b]
    scans.add((len(mine), max(p.bucket for p in mine), max(p.patch_budget for p in mine)))
    scan_slots += len(mine) * geometry.rows * max(p.bucket for p in mine)
  scan_ratio = scan_slots / batch_lib.token_slots(ours, sizes, geometry.rows)[1]
  patch_dim = 3 * 2 * 14 * 14

  def input_gb(count, bucket, budget):  # int32 x 8 and float32 x 4 per token; float32 pixels; / 8 devices
    return count * (geometry.rows * bucket * 12 * 4 + budget * patch_dim * 4) / 8 / 1e9

  largest = max(scans)
  print(
    f"  a scan holds a mini-batch's inputs on device at once: {input_gb(*largest):.1f} GB a device "
    f"({largest[0]} microbatches of float32 pixels) against {input_gb(1, *largest[1:]):.2f} GB for "
    "the one microbatch the learner holds"
  )
  print(
    f"  rl.learner compiles one accumulation per (bucket, patch budget): {len(shapes)} here; a scan "
    f"over each mini-batch's microbatches (as SFT's step) would compile one per (count, bucket, "
    f"budget): {len(scans)} for {minibatches} mini-batches, and pad to {scan_ratio:.2f}x the token slots"
  )
  a, b = slots.values()
  print(
    f"  token slots (the step's compute) a trajectory: {a / int(kept.sum()) / (b / n):.2f}x fewer packed; "
    f"{n - int(kept.sum())} of {n} trajectories over train.patch_budget were dropped after their "
    "rollout before, none now"
  )


def expert_rollouts(run, n: int, group: int):
  """Expert trajectories of `n` synthetic tasks (their assistant tokens as the policy's), with
  made-up sampler log-probs and scores: the learner's input without a rollout."""
  from codevision_jax.data import synthetic
  from codevision_jax.rl import rollouts

  convs = synthetic.generate(n, seed=5, kinds=("arrow", "word"), p_small=0.3)
  return rollouts.expert_rollouts(convs, run.tokenizer, run.settings, np.arange(n) // group)


def main(argv):
  del argv
  cfg = tiny_rl.get_config()
  if FLAGS.learner_only:
    cfg.rollout.prompts, cfg.rollout.group_size = FLAGS.prompts, FLAGS.group
    cfg.algo.mini_batch_prompts = FLAGS.prompts // 2
    cfg.data.synthetic_size = FLAGS.prompts
    run = loop.build(cfg, tempfile.mkdtemp(prefix="cvj-rl-bench-"))
    compare_learners(run, expert_rollouts(run, FLAGS.prompts * FLAGS.group, FLAGS.group))
    plan_at_7b_sizes()
    return
  cfg.rollout.prompts, cfg.rollout.group_size, cfg.rollout.slots = FLAGS.prompts, FLAGS.group, FLAGS.slots
  cfg.algo.mini_batch_prompts = FLAGS.prompts // 2
  cfg.data.synthetic_size = 4 * FLAGS.prompts
  cfg.data.synthetic_p_small = 1.0  # Cards small on 512-896 px canvases: tool calls of real cost.
  cfg.agent.max_turns = FLAGS.tool_turns + 2
  run = loop.build(cfg, tempfile.mkdtemp(prefix="cvj-rl-bench-"))
  model = run_setup.build_model(cfg.model, run.tokenizer, seed=cfg.seed)
  run.policy = ShapedPolicy(
    run.tokenizer,
    model,
    think=FLAGS.think,
    tool_turns=FLAGS.tool_turns,
    num_slots=FLAGS.slots,
    capacity=cfg.agent.max_total_tokens,
    chunk=cfg.rollout.chunk,
    steps_per_call=cfg.rollout.steps_per_call,
    temperature=1.0,
  )
  loop.hand_to_sampler(run, run.state["params"])
  with local_service(workers=FLAGS.workers) as service:
    one_round(run, service.url, 0, serial=False)  # Warm-up: compiles every shape.
    rounds = {
      "overlapped (ours)": one_round(run, service.url, 1, serial=False),
      "serial tool calls (reference)": one_round(run, service.url, 2, serial=True),
    }
  print(
    f"one GRPO round, tiny model on CPU: {FLAGS.prompts} prompts x {FLAGS.group} samples, "
    f"{FLAGS.slots} slots, {FLAGS.tool_turns} tool calls and {FLAGS.think} sampled tokens per turn"
  )
  keys = (
    "round_s",
    "rollout_s",
    "generation_s",
    "waiting_on_tools_s",
    "tool_latency_sum_s",
    "scoring_s",
    "logprobs_s",
    "update_s",
    "tool_calls",
  )
  print(f"{'':31s}" + "".join(f"{k:>19s}" for k in keys))
  for name, r in rounds.items():
    print(f"{name:31s}" + "".join(f"{r[k]:19.2f}" for k in keys))
  print(
    "(waiting_on_tools_s: no slot had anything to decode; with serial calls the decoder waits "
    "through every call's latency instead)"
  )
  ours, ref = rounds["overlapped (ours)"], rounds["serial tool calls (reference)"]
  tps_ours, tps_ref = ours["trajectories"] / ours["round_s"], ref["trajectories"] / ref["round_s"]
  print(f"trajectories/s: {tps_ours:.2f} (ours) vs {tps_ref:.2f} (serial tool calls): {tps_ours / tps_ref:.2f}x")
  print(f"sampler idle on tools: {ours['idle_fraction']:.1%} of the rollout (target under 10%)")
  compare_learners(run, ours["ro"])
  plan_at_7b_sizes()


if __name__ == "__main__":
  app.run(main)
