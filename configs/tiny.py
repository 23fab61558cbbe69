"""python -m launch.demo --config=configs/tiny.py   (what `make demo` runs)

The embedded default: the whole pipeline on the tiny Qwen2.5-VL (random init, tiny tokenizer) on
CPU in a few minutes. It is `configs/tiny_rl.py` (its `sft` section is the SFT stage: arrow signs,
upright or upside down, half of them needing the tool), with fewer RL rounds, and an
`orientation` section for the orientation eval of the RL policy on held-out synthetic tasks.
Override any field, e.g. `--config.sft.train.steps=60 --config.train.rounds=2
--config.orientation.size=4`.
"""

import ml_collections

from codevision_jax.processing import orientation
from configs import tiny_rl


def get_config():
  c = tiny_rl.get_config()
  c.train.rounds = 6  # GRPO rounds after the SFT stage.
  c.train.checkpoint_every = 6

  c.eval.every = 0  # RL's own held-out rollouts: the orientation eval below instead.

  c.orientation = ml_collections.ConfigDict()  # evals.orientation.evaluate on the RL export.
  c.orientation.size = 8  # Held-out synthetic items, each asked under every transform.
  c.orientation.kinds = ("arrow",)  # What the tiny model was trained on:
  c.orientation.p_small = 0.0  # signs that fill the image (no crop needed).
  c.orientation.transforms = orientation.TRANSFORMS  # Upright and the five transforms.
  c.orientation.tools = ("on", "off")  # With the code tool, and the no-tool baseline.
  c.orientation.batch = 16  # Trajectories decoded together.
  return c
