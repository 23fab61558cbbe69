"""python -m launch.rollout --config=configs/tiny_rollout.py --out=DIR

Runs the agent loop over a data set (RL or eval records, or SFT records' prompts: JSON, JSONL or
Parquet) through the rollout service (`codevision_jax.rl.rollouts.write_rollouts`) and writes,
under `<out>`:

  transcripts.jsonl   per trajectory: the decoded text of every turn, each tool call's code,
                      stdout, error and result image, the final answer and, where the record has
                      ground truth, whether it is correct (the answer rule, then the judge when
                      `judge.url` names one) and the reward parts
  trajectories.jsonl  the token ids, policy mask and log-probs (trajectory.load_jsonl reads them)
  images/             every input and tool image, <trajectory id>_<k>.png
  summary.json        the rollout summary (`rl.rollouts.SUMMARY`, the names RL's metrics.jsonl
                      uses): accuracy, reward parts, tool calls, statuses and operations, turns,
                      finish reasons, the judge's counts and the time split

The executor services must answer /healthz before the model is built. The config names the
model, data, sampler (`rollout`, as in the RL recipes), agent limits, executor and judge (see
`configs/tiny_rollout.py`; any field can be overridden, e.g. `--config.model.path=/ckpt/model
--config.data.source=files --config.data.paths=/data/eval.parquet
--config.executor.urls=http://exec-0:8700,http://exec-1:8700`).
Its defaults run the tiny Qwen2.5-VL with random weights on synthetic tasks with a local executor
service, on a laptop CPU.
"""

from __future__ import annotations

import logging
import os
import time

from absl import flags

from launch import errors, shell

DEFAULT_CONFIG = "configs/tiny_rollout.py"
_CONFIG = errors.define_config_file(DEFAULT_CONFIG, "Config file.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: a new directory under /tmp).")
flags.DEFINE_bool(
  "orbax_logs", False, "Show the INFO log lines of Orbax (checkpoint internals) and of JAX's backend probing."
)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  from codevision_jax.rl import rollouts
  from codevision_jax.runtime import run_setup

  run_setup.quiet_orbax(flags.FLAGS.orbax_logs)
  out = _OUT.value or os.path.join("/tmp", f"cvj-rollout-{int(time.time())}")
  s = rollouts.write_rollouts(_CONFIG.value, out)
  accuracy = (
    "no ground truth"
    if s["accuracy"] is None
    else (
      f"{s['accuracy']:.3f} over {s['with_ground_truth']} with ground truth, mean reward {s['reward']['score']:.3f}"
    )
  )
  print(
    f"== done: {s['trajectories']} trajectories in {s['time']['rollout_s']:.1f} s\n"
    f"   accuracy: {accuracy}\n"
    f"   tool calls: {s['tool_calls']} ({s['tool_calls_per_trajectory']:.2f} per trajectory), "
    f"status {s['tool_status']}\n"
    f"   finish reasons (share of trajectories): {s['finish']}\n"
    f"   transcripts (every turn's text, the calls, answers): "
    f"{os.path.join(out, 'transcripts.jsonl')}\n"
    f"   trajectories (tokens, log-probs): {os.path.join(out, 'trajectories.jsonl')}\n"
    f"   summary: {os.path.join(out, 'summary.json')}\n"
    f"   read them in a browser after {shell.python_m('launch.view', f'--rollouts={out}')}"
  )


if __name__ == "__main__":
  errors.run(main, default_config=DEFAULT_CONFIG)
