"""python -m launch.demo --config=configs/tiny.py   (what `make demo` runs)

The embedded default: the tiny Qwen2.5-VL (random init) and the tiny tokenizer, fine-tuned on
built-in synthetic orientation-and-crop trajectories on CPU in a few minutes, then asked a few
held-out questions. It is `configs/tiny_sft.py` with the demo's additions; override any field,
e.g. `--config.train.steps=20`.
"""

import ml_collections

from configs import tiny_sft


def get_config():
  c = tiny_sft.get_config()
  c.demo = ml_collections.ConfigDict()
  c.demo.num_questions = 3        # Held-out synthetic prompts answered greedily after training.
  c.demo.question_seed = 10_000   # Seed of those prompts (the training tasks use data.synthetic_seed).
  c.demo.max_new_tokens = 96
  return c
