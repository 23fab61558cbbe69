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
from codevision_jax.rl import rollouts
from configs import orientation_eval
from evals import orientation, report, runner
from evals.suites import synthetic

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
  cfg = orientation_eval.get_config()  # The eval's rollout config: greedy.
  if FLAGS.checkpoint:
    cfg.model.path, _ = orientation.model_dir(FLAGS.checkpoint, work)
  else:
    cfg.data.max_pixels = 28 * 28 * 16
  cfg.rollout.slots = FLAGS.batch
  cfg.agent.max_turns, cfg.agent.max_total_tokens = FLAGS.max_turns, FLAGS.max_total_tokens
  cfg.agent.system_prompt = FLAGS.system_prompt
  tokenizer, model, settings = rollouts.model_parts(cfg, work)
  agent = rollouts.agent_config(cfg)
  policy = rollouts.build_policy(cfg, model, tokenizer)
  items = synthetic.synthetic_items(FLAGS.size, kinds=FLAGS.kinds, p_small=FLAGS.p_small)

  def run(urls, tools, n):
    cases = runner.make_cases(items[:n], transforms.TRANSFORMS, (tools,))
    out = tempfile.mkdtemp(dir=work)

    async def go():
      async with ExecutorClient(urls) as client:
        return await runner.run_cases(
          cases, out, policy=policy, tokenizer=tokenizer, client=client, settings=settings, agent=agent
        )

    t = time.perf_counter()
    asyncio.run(go())
    seconds = time.perf_counter() - t
    results = list(runner.load_results(out).values())
    return seconds, report.metrics(results)

  with rollouts.executor_services("", workers=2) as urls:  # A local service.
    for tools in ("off", "on"):  # Warm-up: every compiled shape.
      run(urls, tools, 1)
    rates = {}
    for tools in ("off", "on"):
      seconds, m = run(urls, tools, FLAGS.size)
      rates[tools] = m["trajectories"] / seconds
      print(
        f"tools {tools:3s}: {m['trajectories']} cases in {seconds:.1f} s = {rates[tools]:.2f} cases/s "
        f"({rates[tools] / 6:.2f} items/s over 6 transforms); accuracy {m['accuracy']:.3f}, "
        f"{m['tool_calls_per_trajectory']:.2f} tool calls and {m['turns']:.2f} turns "
        f"per trajectory, finish {json.dumps(m['finish'])}"
      )
  print(f"tools on / tools off throughput: {rates['on'] / rates['off']:.2f}x")


if __name__ == "__main__":
  app.run(main)
