"""A PEFT LoRA adapter directory: `adapter_config.json` and `adapter_model.safetensors` in PEFT's
key names, which `peft.PeftModel.from_pretrained(base, directory)` loads onto the HF base model.

Our adapters are `lora_a` [in, r] and `lora_b` [r, out] beside a kernel [in, out]; PEFT's are
`<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r] beside a weight [out, in]
(both transposed), under `base_model.model.` and the module's name in the transformers model
(the transformers-5 layout: `model.language_model.layers.N.self_attn.q_proj`). The scale is
lora_alpha / r in both. Nothing here imports peft or torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from codevision_jax.hf import safetensors_io
from codevision_jax.models import lora

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def adapter_config(settings: lora.LoraSettings, module_keys, base_model: str = "") -> dict:
  """PEFT's LoraConfig fields for these settings, targeting exactly `module_keys`."""
  return {
    "peft_type": "LORA",
    "task_type": None,
    "base_model_name_or_path": base_model or None,
    "r": settings.rank,
    "lora_alpha": settings.alpha,
    "lora_dropout": settings.dropout,
    "target_modules": lora.peft_target_regex(module_keys),
    "bias": "none",
    "fan_in_fan_out": False,
    "init_lora_weights": True,
    "inference_mode": True,
    "modules_to_save": None,
    "use_rslora": False,
    "use_dora": False,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
  }


def write_adapter(
  out_dir: str, settings: lora.LoraSettings, adapters: dict, *, base_model: str = "", dtype=np.float32
) -> str:
  """Writes the adapter directory; returns it. `adapters` maps each adapted module's HF name to its
  (lora_a [in, r], lora_b [r, out]) in our layout (adapters are small: rank r). Atomic: the
  directory appears only when complete."""
  dtype = np.dtype(dtype)
  tensors = {}
  for key in sorted(adapters):
    a, b = adapters[key]
    tensors[f"{PREFIX}{key}.lora_A.weight"] = np.asarray(a, np.float32).T.astype(dtype)
    tensors[f"{PREFIX}{key}.lora_B.weight"] = np.asarray(b, np.float32).T.astype(dtype)
  specs = [(name, x.shape, dtype) for name, x in tensors.items()]
  out_dir = os.path.abspath(out_dir)
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=os.path.dirname(out_dir))
  try:
    safetensors_io.write_file(os.path.join(tmp, WEIGHTS_FILE), specs, tensors.__getitem__)
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(adapter_config(settings, adapters, base_model), f, indent=2)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
    tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  return out_dir
