"""The orientation eval's throughput on CPU: items per second with the code tool on and off.

    python -m benchmarks.eval [--checkpoint=DIR] [--size=8] [--batch=16] [--max_total_tokens=768]

Runs the eval's cases (`evals.runner`: each synthetic item upright and under the five
transforms, scored) with one model and sampler twice in one process, once with the tool and once
without (the no-tool baseline is the reference), each into a fresh directory after a warm-up
that compiles the shapes, and prints cases (item x transform) per second of each, their ratio,
and the tool calls and turns per trajectory behind the difference. `--checkpoint` names a trained model (e.g. the
HF export `make demo` writes, `<workdir>/hf`, with `--system_prompt=false`); by default the tiny
random model, which rarely makes a well-formed call, so there the two differ mostly in turns.
"""

import asyncio
import json
import tempfile
import time

from absl import app, flags

from codevision_jax.execution.client import ExecutorClient
from codevision_jax.processing import orientation as transforms
from codevision_jax.sampling import environment
from codevision_jax.sampling.policy import ModelPolicy
from codevision_jax.runtime import run_setup
from configs import tiny_rollout
from evals import orientation, report, runner
from evals.suites import synthetic
from executor.local import local_service

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "HF checkpoint or training workdir (default: tiny random).")
flags.DEFINE_integer("size", 8, "Synthetic items (each asked under 6 transforms).")
flags.DEFINE_list("kinds", ["arrow"], "Synthetic kinds.")
flags.DEFINE_float("p_small", 0.0, "Share of synthetic items small on a canvas (as the demo's).")
flags.DEFINE_integer("batch", 16, "Trajectories decoded together.")
flags.DEFINE_integer("max_turns", 4, "Assistant turns with the tool.")
flags.DEFINE_integer("max_total_tokens", 768, "Prompt + response tokens per trajectory.")
flags.DEFINE_bool("system_prompt", False, "The system prompt and tool schema with the tool.")


def main(argv):
  del argv
  work = tempfile.mkdtemp(prefix="cvj-bench-eval-")
  cfg = tiny_rollout.get_config()
  if FLAGS.checkpoint:
    cfg.model.path, _ = orientation.model_dir(FLAGS.checkpoint, work)
    cfg.data.max_pixels = 0
  else:
    cfg.data.max_pixels = 28 * 28 * 16
  tokenizer, model, settings = run_setup.model_parts(
      cfg, work, run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh))
  agent = environment.AgentConfig(max_turns=FLAGS.max_turns,
                                  max_total_tokens=FLAGS.max_total_tokens,
                                  system_prompt=FLAGS.system_prompt)
  policy = ModelPolicy(model, environment.stop_ids(tokenizer), num_slots=FLAGS.batch,
                       capacity=agent.max_total_tokens, temperature=0.0,
                       yield_ids=environment.yield_ids(tokenizer))
  items = synthetic.synthetic_items(FLAGS.size, kinds=FLAGS.kinds, p_small=FLAGS.p_small)

  def run(url, tools, n):
    cases = runner.make_cases(items[:n], transforms.TRANSFORMS, (tools,))
    out = tempfile.mkdtemp(dir=work)

    async def go():
      async with ExecutorClient(url) as client:
        return await runner.run_cases(cases, out, policy=policy, tokenizer=tokenizer,
                                      client=client, settings=settings, agent=agent)
    t = time.perf_counter()
    asyncio.run(go())
    seconds = time.perf_counter() - t
    results = list(runner.load_results(out).values())
    return seconds, report.metrics(results)

  with local_service(workers=2) as service:
    for tools in ("off", "on"):  # Warm-up: every compiled shape.
      run(service.url, tools, 1)
    rates = {}
    for tools in ("off", "on"):
      seconds, m = run(service.url, tools, FLAGS.size)
      rates[tools] = m["trajectories"] / seconds
      print(f"tools {tools:3s}: {m['trajectories']} cases in {seconds:.1f} s = {rates[tools]:.2f} cases/s "
            f"({rates[tools] / 6:.2f} items/s over 6 transforms); accuracy {m['accuracy']:.3f}, "
            f"{m['tool_calls_per_trajectory']:.2f} tool calls and {m['turns']:.2f} turns "
            f"per trajectory, finish {json.dumps(m['finish'])}")
  print(f"tools on / tools off throughput: {rates['on'] / rates['off']:.2f}x")


if __name__ == "__main__":
  app.run(main)
