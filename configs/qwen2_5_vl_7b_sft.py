"""python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --workdir=DIR --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.paths=/data/codevision_sft.json

CodeVision's SFT recipe for Qwen2.5-VL-7B: every value and what it does is in configs/base_sft.py
(with configs/common.py's sections); this file names the model. The chat format is the family's
qwen2_vl, which adds the default system text to a conversation without one.

Before renting accelerators, check that the recipe fits them (nothing is allocated; the table
lists each part's bytes per device, see README "Will it fit?"):
    python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --config.model.preset=qwen2_5_vl_7b \
        --dry_run --dry_run_devices=8

Smoke test (base_sft.smoke: the tiny Qwen2.5-VL, images up to 50176 pixels, one step on CPU):
    python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py:smoke --workdir=/tmp/smoke_qwen2_5_vl_7b_sft

Its checkpoints are where the GRPO recipe starts: configs/qwen2_5_vl_7b_rl.py with
--config.init.sft_workdir=<this run's workdir>.
"""

from configs import base_sft, common


def get_config(variant=""):
  c = base_sft.recipe()
  c.model.path = ""  # Required: --config.model.path=<HF checkpoint directory>.
  c.model.preset = ""  # A named random model instead of a checkpoint: qwen2_5_vl_7b (the
  # published shapes; dry runs), qwen2_5_vl_tiny (smoke tests).
  return common.variant(c, variant, lambda c: base_sft.smoke(c, "qwen2_5_vl_tiny", max_pixels=50176))
