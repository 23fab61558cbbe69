"""A LoRA run's frozen base from an earlier run's checkpoint (RL's `init.sft_workdir`).

The SFT run's parameters, trained and frozen alike, become the base (a LoRA SFT run's adapters
merged in: `export.merged_values`), in the base's dtype (a QLoRA base quantized again); the RL
run's own adapters start fresh (B zero), so its reference policy (adapters off) is the SFT model.
Read one tensor at a time from the checkpoint, as the export does.
"""

from __future__ import annotations

import jax
import numpy as np

from codevision_jax.models import lora
from codevision_jax.runtime import export


def _flat(tree: dict, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out


def _nest(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def base_from_run(
  workdir: str, frozen: dict, frozen_sh: dict, settings: lora.LoraSettings, key: str = "init.sft_workdir"
) -> dict:
  """`frozen` (a pure dict of this run's base, placed by `frozen_sh`) with the values of the
  run in `workdir`'s latest checkpoint. Raises naming `key` when that run is of another model."""
  ck = export.open_checkpoint(workdir)
  other = lora.settings(ck.cfg)
  value_of = export.merged_values(ck.value_of, ck.paths, other) if other.enabled else ck.value_of
  want = _flat(frozen)
  missing = [p for p in want if p[-1] != lora.SCALE_NAME and p not in ck.paths]
  if missing:
    raise ValueError(
      f"{key} {workdir}: its checkpoint lacks parameters this run's model has, e.g. "
      f"{['.'.join(map(str, p)) for p in missing[:3]]}: use that run's model settings "
      "(model.preset or model.path, model.vocab_size, model.scan_layers)"
    )
  values = {}
  for path, like in want.items():
    if path[-1] == lora.SCALE_NAME:
      continue
    x = value_of(path)
    scale_path = path[:-1] + (lora.SCALE_NAME,)
    if path[-1] == "kernel" and scale_path in want:
      q, s = lora.quantize(np.asarray(x, np.float32), settings.quantized)
      values[path], values[scale_path] = q, s.astype(want[scale_path].dtype)
      continue
    if tuple(np.shape(x)) != tuple(like.shape):
      raise ValueError(
        f"{key} {workdir}: {'.'.join(map(str, path))} is {list(np.shape(x))} there, "
        f"{list(like.shape)} here: use that run's model settings"
      )
    values[path] = np.asarray(x).astype(like.dtype)
  return jax.device_put(_nest(values), frozen_sh)
