"""python -m launch.rl --config=configs/qwen3_vl_8b_rl.py --workdir=DIR --config.init.sft_workdir=/runs/sft_8b --config.model.path=/ckpt/Qwen3-VL-8B-Thinking --config.data.paths=/data/codevision_rl.parquet --config.executor.urls=http://exec-0:8700,http://exec-1:8700

CodeVision's GRPO recipe for Qwen3-VL-8B, the one of Qwen2.5-VL-7B: every value and what it does
is in configs/base_rl.py (with configs/common.py's sections); this file names the model. The
family (`model_type` "qwen3_vl") is read from the checkpoint's config.json.

Before renting accelerators, check that the recipe fits them (nothing is allocated; the table
lists each part's bytes per device in each phase, see README "Will it fit?"):
    python -m launch.rl --config=configs/qwen3_vl_8b_rl.py --config.model.preset=qwen3_vl_8b \
        --dry_run --dry_run_devices=8

Smoke test (base_rl.smoke: the tiny Qwen3-VL, images up to 131072 pixels, one round on CPU):
    python -m launch.rl --config=configs/qwen3_vl_8b_rl.py:smoke --workdir=/tmp/smoke_qwen3_vl_8b_rl

The policy starts from the SFT recipe's run (configs/qwen3_vl_8b_sft.py) named by
`init.sft_workdir`, or from `model.path` alone when that is empty.
"""

from configs import base_rl, common


def get_config(variant=""):
  c = base_rl.recipe()
  c.model.path = ""  # Required: the Qwen3-VL HF checkpoint (tokenizer, processor, weights).
  c.model.preset = ""  # A named random model instead of a checkpoint: qwen3_vl_8b (the
  # published shapes; dry runs), qwen3_vl_tiny (smoke tests).
  return common.variant(c, variant, lambda c: base_rl.smoke(c, "qwen3_vl_tiny", max_pixels=131072))
