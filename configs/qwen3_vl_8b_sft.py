"""python -m launch.sft --config=configs/qwen3_vl_8b_sft.py --workdir=DIR --config.model.path=/ckpt/Qwen3-VL-8B-Thinking --config.data.paths=/data/codevision_sft.json

CodeVision's SFT recipe for Qwen3-VL-8B, the one of Qwen2.5-VL-7B: every value and what it does is
in configs/base_sft.py (with configs/common.py's sections); this file names the model. The family
(`model_type` "qwen3_vl") is read from the checkpoint's config.json; its chat format is qwen3_vl
(qwen3_vl_nothink for Instruct checkpoints), and images follow the checkpoint's processor
(16-pixel patches) with the recipe's pixel cap.

Before renting accelerators, check that the recipe fits them (nothing is allocated; the table
lists each part's bytes per device, see README "Will it fit?"):
    python -m launch.sft --config=configs/qwen3_vl_8b_sft.py --config.model.preset=qwen3_vl_8b \
        --dry_run --dry_run_devices=8

Smoke test (base_sft.smoke: the tiny Qwen3-VL, images up to 131072 pixels, one step on CPU):
    python -m launch.sft --config=configs/qwen3_vl_8b_sft.py:smoke --workdir=/tmp/smoke_qwen3_vl_8b_sft

Its checkpoints are where the GRPO recipe starts: configs/qwen3_vl_8b_rl.py with
--config.init.sft_workdir=<this run's workdir>.
"""

from configs import base_sft, common


def get_config(variant=""):
  c = base_sft.recipe()
  c.model.path = ""  # Required: --config.model.path=<Qwen3-VL checkpoint directory>.
  c.model.preset = ""  # A named random model instead of a checkpoint: qwen3_vl_8b (the
  # published shapes; dry runs), qwen3_vl_tiny (smoke tests).
  return common.variant(c, variant, lambda c: base_sft.smoke(c, "qwen3_vl_tiny", max_pixels=131072))
