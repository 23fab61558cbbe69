"""A random Qwen2.5-VL HF checkpoint of a chosen size (its decoder widened), for the memory
benchmarks (`benchmarks/load.py`, `benchmarks/export.py`)."""

import json
import os


def write_checkpoint(path: str, size_bytes: float, dtype: str) -> int:
  import numpy as np
  from codevision_jax import models
  from codevision_jax.hf import save as hf_save
  from codevision_jax.models import presets

  itemsize = np.dtype(dtype).itemsize
  # Decoder layers of hidden 1024: ~12.6M parameters each; embeddings 2 x 32000 x 1024.
  base = presets.qwen2_5_vl_tiny()
  per_layer = 4 * 1024 * 1024 + 3 * 1024 * 2816
  layers = max(1, int((size_bytes / itemsize - 2 * 32000 * 1024) / per_layer))
  cfg = base.replace(
    text=base.text.__class__(
      **{
        **base.text.__dict__,
        "vocab_size": 32000,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "mrope_section": (16, 24, 24),
      }
    ),
    vision=base.vision.__class__(**{**base.vision.__dict__, "out_hidden_size": 1024}),
    image_token_id=31990,
    video_token_id=31991,
    vision_start_token_id=31992,
    vision_end_token_id=31993,
  )
  model = models.build_model(cfg, param_dtype=np.dtype(dtype))
  hf_save.save_hf(model, path, max_shard_size="200MB")
  del model
  index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
  return index["metadata"]["total_size"]
