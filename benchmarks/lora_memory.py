"""LoRA's memory and speed: the RL state of the 7B and 8B recipes on one H200, full against LoRA
against QLoRA, and the tiny model's SFT step time with LoRA against full fine-tuning on CPU.

    python -m benchmarks.lora_memory [--rank=64] [--device_memory_gb=141] [--steps=6] [--skip_speed]

Memory: `runtime.dry_run.plan_rl` (jax.eval_shape accounting, exact shard sizes) of
configs/qwen2_5_vl_7b_rl.py and configs/qwen3_vl_8b_rl.py with the presets' shapes on a
one-device mesh: parameters, optimizer state, reference, frozen base, the sampler's copies and the
KV cache of the recipe's rollout batch (rollout.slots x agent.max_total_tokens), and the learn
phase's gradients and (estimated) activations. For each variant it prints each phase's total, the
ratio to full fine-tuning, and whether it fits; when a LoRA variant does not, the largest
rollout.slots (rollout phase) and train.rows (learn phase) that do (`fits_with`). Speed: the tiny Qwen2.5-VL SFT step (configs/tiny_sft.py, float32, 2 CPU devices)
jitted, median of `--steps` steps after a warm-up, LoRA (rank 8, every decoder projection)
against all decoder parameters training.
"""

import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from codevision_jax import parallel
from codevision_jax.runtime import dry_run

FLAGS = flags.FLAGS
flags.DEFINE_integer("rank", 64, "LoRA rank of the memory variants.")
flags.DEFINE_float("device_memory_gb", 141.0, "Memory of the target device (an H200: 141 GB).")
flags.DEFINE_integer("steps", 6, "Timed SFT steps per variant (after one warm-up step).")
flags.DEFINE_bool("skip_speed", False, "Only the memory accounting.")

RECIPES = (("qwen2_5_vl_7b", "configs.qwen2_5_vl_7b_rl"), ("qwen3_vl_8b", "configs.qwen3_vl_8b_rl"))
VARIANTS = (("full", 0, ""), ("LoRA", None, "bfloat16"), ("QLoRA int8", None, "int8"))


def recipe(module: str, preset: str, rank: int, base_dtype: str):
  import importlib

  c = importlib.import_module(module).get_config()
  c.model.preset, c.model.path = preset, ""
  c.model.lora.rank, c.model.lora.base_dtype = rank, base_dtype
  return c


def memory(device_memory: float) -> None:
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  for preset, module in RECIPES:
    print(f"\n{preset} RL round on one device of {device_memory / 1e9:.0f} GB (per-phase totals, GB):")
    full = None
    for name, rank, base in VARIANTS:
      rank = FLAGS.rank if rank is None else rank
      c = recipe(module, preset, rank, base)
      plan = dry_run.plan_rl(c, mesh, platform="gpu", device_memory=device_memory)
      totals = {phase: plan.total(phase) for phase in plan.phases}
      full = full or totals
      parts = {p.name: p.bytes for p in plan.phases["rollout"]}
      state = sum(parts[k] for k in ("parameters", "optimizer state", "reference", "frozen parameters"))
      line = "  ".join(f"{ph} {t / 1e9:7.1f} ({t / full[ph]:.2f}x)" for ph, t in totals.items())
      print(
        f"  {name:<11} {line}   state {state / 1e9:6.1f}, KV cache {parts['KV cache'] / 1e9:5.1f}"
        f" ({c.rollout.slots} slots x {c.agent.max_total_tokens} tokens), sampler copies "
        f"{(parts['sampler weights'] + parts['sampler frozen copy']) / 1e9:5.1f}"
        f"  -> {'fits' if plan.fits else 'DOES NOT FIT'}"
      )
      if not plan.fits and rank:
        print(f"  {'':<11} {fits_with(c, plan, mesh, device_memory)}")
  print("  (learn: activations are an estimate; the other parts are exact shard sizes)")


def fits_with(c, plan, mesh, device_memory: float) -> str:
  """The largest rollout batch (rollout.slots) and learner rows (train.rows) with which the
  rollout and learn phases fit: the KV cache grows linearly with the slots and the activations
  with the rows, so each is solved from this plan, then checked with a plan at those values."""

  def largest(phase, part, now):
    parts = {p.name: p.bytes for p in plan.phases[phase]}
    rest, per = plan.total(phase) - parts[part], parts[part] / now
    return max(min(int((device_memory - rest) // per), now), 0)

  slots, rows = largest("rollout", "KV cache", c.rollout.slots), largest("learn", "activations", c.train.rows)
  if not slots or not rows:
    return (
      f"no rollout batch fits: without the KV cache the rollout phase needs {plan.total('rollout') / 1e9:.1f} GB"
      if not slots
      else "not even one learner row fits: lower train.buckets (the longest sequence)"
    )
  c.rollout.slots, c.train.rows = slots, rows
  check = dry_run.plan_rl(c, mesh, platform="gpu", device_memory=device_memory)
  return (
    f"fits with rollout.slots={slots} and train.rows={rows} (rollout "
    f"{check.total('rollout') / 1e9:.1f} GB, learn {check.total('learn') / 1e9:.1f} GB): "
    f"{'checked' if check.fits else 'STILL DOES NOT FIT'}"
  )


def step_time(rank: int) -> float:
  from codevision_jax.data import pipeline
  from codevision_jax.train import loop
  from configs import tiny_sft

  c = tiny_sft.get_config()
  c.data.synthetic_size, c.data.buckets, c.data.drop_oversized = 48, (512,), True
  c.data.batch_size, c.data.patch_budget, c.data.max_pixels = 4, 64, 28 * 28 * 4
  c.mesh.num_devices, c.mesh.shape.fsdp = min(2, jax.device_count()), min(2, jax.device_count())
  c.train.steps = FLAGS.steps + 1
  c.model.lora.rank = rank
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.build(c, workdir)
    iterator = pipeline.make_iterator(run.plan, run.builder, workers=0, buffer=1)
    batch = next(iterator)
    iterator.close()
    batch.pop("image_grid_thw", None)
    jitted, batch_sh = run.jit_step(batch)
    device_batch = loop.to_global(batch, batch_sh)
    state = run.state
    state, m = jitted(state, run.frozen, device_batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(FLAGS.steps):
      t = time.perf_counter()
      state, m = jitted(state, run.frozen, device_batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv):
  del argv
  memory(FLAGS.device_memory_gb * 1e9)
  if not FLAGS.skip_speed:
    full, adapters = step_time(0), step_time(8)
    print(
      f"\ntiny SFT step on CPU: full {full * 1e3:.0f} ms, LoRA rank 8 {adapters * 1e3:.0f} ms ({adapters / full:.2f}x)"
    )


if __name__ == "__main__":
  app.run(main)
