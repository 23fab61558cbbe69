"""python -m evals.orientation --config=configs/orientation_eval.py --out=/tmp/eval

The orientation eval's rollout config (evals/orientation.py): the sections of
`configs/tiny_rollout.py` (model, data's image budget, mesh, the sampler in `rollout`, the agent's
limits in `agent`, the local executor's workers, the judge's limits) with an eval's values:
greedy decoding, 16 trajectories in flight, 12 turns and 8192 tokens per trajectory, the image
budget of the checkpoint. Without --checkpoint the tiny random model runs (a smoke test, its
images at evals.orientation.SMOKE_MAX_PIXELS). A real eval, e.g.

    python -m evals.orientation --config=configs/orientation_eval.py --checkpoint=/runs/rl_7b \\
        --out=/evals/rl_7b --config.rollout.slots=64 --config.agent.max_total_tokens=16384
"""

from configs import tiny_rollout


def get_config():
  c = tiny_rollout.get_config()
  c.rollout.temperature = 0.0  # Greedy: an eval's answers are reproducible.
  c.rollout.slots = 16  # Trajectories decoded together.
  c.agent.max_turns = 12  # Assistant turns with the tool (one without it).
  c.agent.max_total_tokens = 8192
  c.data.max_pixels = 0  # The checkpoint's image budget.
  return c
