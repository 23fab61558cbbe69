"""The mapping between this project's parameters and HF checkpoint keys.

Module names mirror transformers, so the mapping is mechanical: join the NNX path with dots; a
linear `kernel` [in, out] is HF's `weight` [out, in] (transposed); everything else (norm and
embedding `weight`, `bias`) is identical. A family adds only its exceptions: renamed indices
(`merger.mlp.1` is HF's `merger.mlp.2`, the GELU between them has no weights) and the Conv3d
patch embedding, whose weight [hidden, C, T, P, P] is our [C*T*P*P, hidden] kernel.

Two key layouts exist for the same tensors:
* transformers 5 (what `save_pretrained` writes): `model.visual.*`, `model.language_model.*`;
* the official Qwen2.5-VL release: `visual.*`, `model.*` for the decoder.
We read both and write the family's official one (Qwen3-VL was released in the transformers-5
layout, which transformers loads without renaming); transformers loads either.

A scanned decoder (`scan_layers`) holds each layer parameter once, stacked [L, ...], at
`model.language_model.layers.<name>`: it maps to L tensors `...layers.{i}.<name>`, one mapping per
layer (`ParamMapping.layer`: the index into the stacked array).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import nnx

from codevision_jax.models.config import VLConfig

# Our path -> HF path renames, per family (applied to the dotted path, in order).
_RENAMES = {
  "qwen2_5_vl": [(r"^model\.visual\.merger\.mlp\.1\.", "model.visual.merger.mlp.2.")],
  "qwen3_vl": [],  # Same module names as transformers (`merger.linear_fc1`, `pos_embed`, ...).
}


@dataclasses.dataclass(frozen=True)
class ParamMapping:
  """One parameter: our path (tuple, as in the NNX state) and its HF key and shape."""

  path: tuple
  hf_key: str  # transformers-5 layout
  shape: tuple[int, ...]  # ours (one layer's, for a stacked parameter)
  hf_shape: tuple[int, ...]
  kind: str  # "same", "transpose" or "conv"
  layer: int | None = None  # a stacked parameter's layer (its index on the leading axis)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    if self.kind == "same":
      return x
    return np.ascontiguousarray(x.T).reshape(self.hf_shape)

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    if self.kind == "same":
      return x
    return np.ascontiguousarray(x.reshape(self.hf_shape[0], -1).T)


def param_mappings(model_or_state, config: VLConfig) -> list[ParamMapping]:
  """One mapping per parameter of `model_or_state` (a module, abstract or not, or its state)."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
  out, stacked, num_layers = [], [], 0
  for path, var in nnx.to_flat_state(state):
    shape = tuple(var.get_value().shape)
    if is_stacked_layer_path(path):
      stacked.append(_mapping(path, ".".join(str(p) for p in path), shape[1:], config))
      num_layers = shape[0]
      continue
    out.extend(_per_layer(stacked, num_layers))  # The stacked group (when there is one) ends.
    stacked = []
    out.append(_mapping(path, ".".join(str(p) for p in path), shape, config))
  return out + _per_layer(stacked, num_layers)


def _per_layer(stacked: list[ParamMapping], num_layers: int) -> list[ParamMapping]:
  """The mappings of stacked parameters, one per layer and parameter, layer-major: the order of
  an unscanned decoder's parameters (so that both export the same file)."""
  prefix = ".".join(_STACKED_PREFIX) + "."
  return [
    dataclasses.replace(m, layer=i, hf_key=m.hf_key.replace(prefix, f"{prefix}{i}.", 1))
    for i in range(num_layers)
    for m in stacked
  ]


# Where a scanned decoder keeps its stacked layers.
_STACKED_PREFIX = ("model", "language_model", "layers")


def is_stacked_layer_path(path: tuple) -> bool:
  """Whether an NNX path is a parameter of scanned (stacked) decoder layers: `layers` followed by
  a name, where an unscanned decoder has a layer index."""
  n = len(_STACKED_PREFIX)
  return (
    tuple(str(p) for p in path[:n]) == _STACKED_PREFIX
    and len(path) > n
    and not isinstance(path[n], int)
    and not str(path[n]).isdigit()
  )


def _mapping(path: tuple, dotted: str, shape: tuple[int, ...], config: VLConfig) -> ParamMapping:
  """The mapping of one tensor of our `shape` at `dotted` (the joined NNX path)."""
  kind = "same"
  hf_shape = shape
  if path[-1] == "kernel":
    dotted = dotted[: -len("kernel")] + "weight"
    kind = "transpose"
    hf_shape = shape[::-1]
    if dotted.endswith("patch_embed.proj.weight"):
      v = config.vision
      kind = "conv"
      hf_shape = (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  for pattern, repl in _RENAMES[config.model_type]:
    dotted = re.sub(pattern, repl, dotted)
  return ParamMapping(tuple(path), dotted, shape, hf_shape, kind)


def to_transformers_layout(key: str) -> str:
  """Any accepted checkpoint key -> the transformers-5 layout."""
  if key.startswith("visual."):
    return "model." + key
  if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
    return "model.language_model." + key[len("model.") :]
  return key


# Families whose official release uses the transformers-5 layout unchanged.
_TRANSFORMERS_LAYOUT_RELEASES = ("qwen3_vl",)


def to_official_layout(key: str, model_type: str = "qwen2_5_vl") -> str:
  """transformers-5 key -> the official release layout of `model_type`.

  Qwen2.5-VL's release puts the tower at `visual.*` and the decoder at `model.*`; Qwen3-VL's keeps
  `model.visual.*` / `model.language_model.*` (transformers has no renaming for qwen3_vl, so a
  Qwen3-VL file in the Qwen2.5 layout would not load).
  """
  if model_type in _TRANSFORMERS_LAYOUT_RELEASES:
    return key
  if key.startswith("model.visual."):
    return key[len("model.") :]
  if key.startswith("model.language_model."):
    return "model." + key[len("model.language_model.") :]
  return key
