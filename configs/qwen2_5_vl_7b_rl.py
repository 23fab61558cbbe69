"""python -m launch.rl --config=configs/qwen2_5_vl_7b_rl.py --workdir=DIR --config.init.sft_workdir=/runs/sft_7b --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.paths=/data/codevision_rl.parquet --config.executor.urls=http://exec-0:8700,http://exec-1:8700

CodeVision's GRPO recipe for Qwen2.5-VL-7B: every value and what it does is in configs/base_rl.py
(with configs/common.py's sections); this file names the model.

Before renting accelerators, check that the recipe fits them (nothing is allocated; the table
lists each part's bytes per device in each phase, see README "Will it fit?"):
    python -m launch.rl --config=configs/qwen2_5_vl_7b_rl.py --config.model.preset=qwen2_5_vl_7b \
        --dry_run --dry_run_devices=8

Smoke test (base_rl.smoke: the tiny Qwen2.5-VL, images up to 50176 pixels, one round on CPU):
    python -m launch.rl --config=configs/qwen2_5_vl_7b_rl.py:smoke --workdir=/tmp/smoke_qwen2_5_vl_7b_rl

The policy starts from the SFT recipe's run (configs/qwen2_5_vl_7b_sft.py) named by
`init.sft_workdir`, or from `model.path` alone when that is empty.
"""

from configs import base_rl, common


def get_config(variant=""):
  c = base_rl.recipe()
  c.model.path = ""  # Required: the HF checkpoint directory (tokenizer, processor, weights).
  c.model.preset = ""  # A named random model instead of a checkpoint: qwen2_5_vl_7b (the
  # published shapes; dry runs), qwen2_5_vl_tiny (smoke tests).
  return common.variant(c, variant, lambda c: base_rl.smoke(c, "qwen2_5_vl_tiny", max_pixels=50176))
