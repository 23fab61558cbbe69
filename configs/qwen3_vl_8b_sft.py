"""python -m launch.sft --config=configs/qwen3_vl_8b_sft.py --workdir=DIR --config.model.path=/ckpt/Qwen3-VL-8B-Thinking --config.data.paths=/data/codevision_sft.json

CodeVision's SFT recipe for Qwen3-VL-8B (`model_type` "qwen3_vl", read from the checkpoint's
config.json): the same recipe as configs/qwen2_5_vl_7b_sft.py (lr 1e-5, cosine, warmup ratio
0.05, 2 epochs, cutoff 32768 tokens, images at most 262144 pixels, frozen vision tower and
merger). Image preprocessing uses Qwen3-VL's settings (16-pixel patches) with that pixel cap.
"""

from configs import qwen2_5_vl_7b_sft


def get_config():
  c = qwen2_5_vl_7b_sft.get_config()
  c.model.path = ""  # Required: --config.model.path=... (a Qwen3-VL HF checkpoint directory)
  return c
