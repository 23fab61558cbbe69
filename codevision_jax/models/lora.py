"""LoRA adapters (and QLoRA's quantized base) on the model's linear layers.

`apply(model, settings)` gives each targeted `layers.Linear` two parameters beside its frozen
`kernel` [in, out]: `lora_a` [in, r] (random, PEFT's default: uniform within 1/sqrt(in)) and
`lora_b` [r, out] (zeros), so that the layer computes x @ kernel + scale * (x @ lora_a) @ lora_b
with scale = alpha / r, and a fresh model gives exactly the base model's outputs. The adapters
carry the kernel's logical axes (`lora_a` its input axis, `lora_b` its output axis, the rank axis
replicated; a scanned decoder's leading "layers" axis too), so they shard with the model.

The base: every other floating parameter is cast to `settings.float_dtype` (the compute dtype:
there is no float32 master copy of weights that do not train); with `base_dtype` "int8" the
decoder's projections are stored quantized, symmetric per output column, with a
`kernel_scale` [out] that the matmul applies after the integer kernel (x @ q * s: dequantized in
the matmul, never stored dequantized).

Targets name the language model's projections (q, k, v, o, gate, up, down) and, optionally, the
vision merger ("merger": the merger and Qwen3-VL's DeepStack mergers) and tower ("tower": the
blocks' linear layers, not the patch embedding). The LM head and embeddings never get adapters.

qwix (the JAX library Tunix uses) is not used: it adds adapters by intercepting dot_general
while tracing the model on sample inputs, which creates them on the transient modules our
scanned decoder merges inside `jax.lax.scan` (they would not persist on the stacked layer), needs
a whole VLM forward with images to apply, and names its parameters by interception order; this
module is a few functions on the `Linear` layer we already have. See docs/lora.md.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from codevision_jax.models.layers import Linear, param

TEXT_TARGETS = {
  "q": "q_proj",
  "k": "k_proj",
  "v": "v_proj",
  "o": "o_proj",
  "gate": "gate_proj",
  "up": "up_proj",
  "down": "down_proj",
}
VISION_TARGETS = ("merger", "tower")
DEFAULT_TARGETS = tuple(TEXT_TARGETS)
FLOAT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
QUANTIZED = {"int8": (jnp.int8, 127)}
ADAPTER_NAMES = ("lora_a", "lora_b")
SCALE_NAME = "kernel_scale"


def config_section() -> ml_collections.ConfigDict:
  """The `model.lora` section every config carries (rank 0: off)."""
  c = ml_collections.ConfigDict()
  c.rank = 0  # > 0: train LoRA adapters of this rank only; the base stays frozen.
  c.alpha = 16.0  # The adapters' output is scaled by alpha / rank.
  c.dropout = 0.0  # Only 0 is supported (the train step has no randomness).
  c.targets = DEFAULT_TARGETS  # Of q, k, v, o, gate, up, down (decoder), merger, tower (vision).
  c.base_dtype = ""  # The frozen base: "" = train.compute_dtype; bfloat16, float32; int8
  return c  # (QLoRA: the decoder's projections quantized per output column).


@dataclasses.dataclass(frozen=True)
class LoraSettings:
  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = DEFAULT_TARGETS
  base_dtype: str = "float32"  # resolved: a float dtype name, or int8
  float_base: str = "float32"  # the dtype of the base's floating parameters (not quantized)

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  @property
  def quantized(self) -> str:
    """ "int8" for a quantized base, else ""."""
    return self.base_dtype if self.base_dtype in QUANTIZED else ""

  @property
  def float_dtype(self):
    return FLOAT_DTYPES[self.float_base]


def settings(cfg) -> LoraSettings:
  """The LoRA settings of a whole config (`model.lora`; absent or rank 0: off). `base_dtype` ""
  resolves to `train.compute_dtype` (float32 without one). Raises naming the key that is wrong."""
  section = cfg.model.get("lora") if "model" in cfg else None
  if section is None or not section.get("rank", 0):
    return LoraSettings()
  rank, dropout = int(section.rank), float(section.get("dropout", 0.0))
  targets = tuple(section.get("targets", DEFAULT_TARGETS))
  if isinstance(section.get("targets"), str):
    targets = tuple(t.strip() for t in section.targets.split(",") if t.strip())
  known = tuple(TEXT_TARGETS) + VISION_TARGETS
  unknown = [t for t in targets if t not in known]
  if rank < 0 or not targets or unknown:
    raise ValueError(
      f"model.lora: rank {rank} and targets {targets} (unknown: {unknown}): the rank must "
      f"be >= 0 and the targets some of {known}"
    )
  if dropout:
    raise ValueError(
      f"model.lora.dropout {dropout}: only 0 is supported (the train step is "
      "deterministic, so that a resumed run equals a straight one); set it to 0"
    )
  compute = cfg.train.get("compute_dtype", "float32") if "train" in cfg else "float32"
  base = section.get("base_dtype", "") or compute
  if base not in FLOAT_DTYPES and base not in QUANTIZED:
    raise ValueError(
      f"model.lora.base_dtype {base!r} is not one of '', {sorted(FLOAT_DTYPES)}, "
      f"{sorted(QUANTIZED)} (int4 is not offered: per-column int4 moved the tiny "
      "model's logits 16x more than int8, and JAX stores int4 a byte per value)"
    )
  return LoraSettings(
    rank, float(section.get("alpha", 16.0)), dropout, targets, base, base if base in FLOAT_DTYPES else compute
  )


# ---- which layers ----------------------------------------------------------------------------------


def is_target(module_path: tuple, targets: tuple[str, ...]) -> bool:
  """Whether the `Linear` at `module_path` (NNX path, without the parameter name) gets adapters."""
  names = [str(p) for p in module_path]
  if "language_model" in names:
    return names[-1] in {TEXT_TARGETS[t] for t in targets if t in TEXT_TARGETS}
  if "visual" in names:
    if "patch_embed" in names:
      return False
    if "merger" in names or "deepstack_merger_list" in names:
      return "merger" in targets
    return "tower" in targets
  return False


def is_quantized_layer(module_path: tuple) -> bool:
  """Whether a QLoRA base stores the `Linear` at `module_path` quantized: the decoder's projections."""
  names = [str(p) for p in module_path]
  return "language_model" in names and names[-1] in TEXT_TARGETS.values()


def is_adapter_path(path: tuple) -> bool:
  return bool(path) and str(path[-1]) in ADAPTER_NAMES


def adapters_filter():
  """An NNX filter of the adapter parameters (what trains when LoRA is on)."""
  return nnx.All(nnx.Param, lambda path, _: is_adapter_path(path))


# ---- building ----------------------------------------------------------------------------------------


def _axes(var: nnx.Variable) -> tuple:
  return tuple(var.get_metadata().get("out_sharding") or (None,) * var.get_value().ndim)


def _key(seed: int, path: tuple) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(".".join(map(str, path)).encode()))


def add_adapters(linear: Linear, path: tuple, rank: int, scale: float, *, seed: int, dtype) -> None:
  """Gives `linear` its adapters (A random, B zero), with the kernel's logical axes."""
  kernel = linear.kernel
  shape, axes = kernel.get_value().shape, _axes(kernel)
  fan_in = shape[-2]
  bound = 1.0 / np.sqrt(fan_in)  # PEFT's default: kaiming_uniform(a=sqrt(5)) on A.
  a = jax.random.uniform(_key(seed, path), shape[:-1] + (rank,), jnp.float32, -bound, bound)
  linear.lora_a = param(a.astype(dtype), axes[:-1] + (None,))
  linear.lora_b = param(jnp.zeros(shape[:-2] + (rank, shape[-1]), dtype), axes[:-2] + (None, axes[-1]))
  linear.lora_scale = scale


def quantize(kernel: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
  """(q, scale): symmetric per output column (the last axis; a stacked kernel per layer too) so
  that kernel ~ q * scale; scale is float32 [..., out]."""
  dtype, top = QUANTIZED[kind]
  k = kernel.astype(jnp.float32)
  scale = jnp.max(jnp.abs(k), axis=-2) / top
  scale = jnp.where(scale > 0, scale, 1.0)
  q = jnp.clip(jnp.round(k / scale[..., None, :]), -top, top).astype(dtype)
  return q, scale


def dequantize(q, scale) -> np.ndarray:
  """float32 kernel of a quantized one (numpy or jax arrays)."""
  return np.asarray(q).astype(np.float32) * np.asarray(scale, np.float32)[..., None, :]


def quantize_linear(linear: Linear, kind: str, scale_dtype) -> None:
  q, scale = quantize(linear.kernel.get_value(), kind)
  axes = _axes(linear.kernel)
  linear.kernel.set_value(q)
  linear.kernel_scale = param(scale.astype(scale_dtype), axes[:-2] + (axes[-1],))


def apply(
  model: nnx.Module, s: LoraSettings, *, seed: int = 0, adapter_dtype=jnp.float32, mesh=None, rules=None
) -> nnx.Module:
  """Adds the adapters of `s` to `model` in place (nothing when `s.enabled` is False), stores the
  base in `s.base_dtype` (quantized projections with a QLoRA base; other floats in the compute
  dtype) and, with a mesh, places the new parameters by their logical axes. Returns the model."""
  if not s.enabled:
    return model
  float_dtype = s.float_dtype
  for path, module in nnx.iter_modules(model):
    if not isinstance(module, Linear):
      continue
    if s.quantized and is_quantized_layer(path):
      quantize_linear(module, s.quantized, float_dtype)
    if is_target(path, s.targets):
      add_adapters(module, path, s.rank, s.scale, seed=seed, dtype=adapter_dtype)
  base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(adapters_filter())))
  nnx.update(model, jax.tree.map(lambda x: x.astype(float_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, base))
  if mesh is not None:
    from codevision_jax import parallel

    parallel.shard_model(model, mesh, rules if rules is not None else parallel.DEFAULT_RULES)
  return model


# ---- pure functions of parameter dicts ------------------------------------------------------------


def _map_leaves(fn, tree, path=()):
  if isinstance(tree, dict):
    return {k: _map_leaves(fn, v, path + (k,)) for k, v in tree.items()}
  return fn(path, tree)


def adapters_off(params: dict) -> dict:
  """`params` (a pure dict) with every `lora_b` zero: the base model's function, adapter-sized
  (RL's reference policy; no second copy of the base weights). Unchanged without adapters."""
  return _map_leaves(lambda p, x: jnp.zeros_like(x) if p and p[-1] == "lora_b" else x, params)


def merged_kernel(kernel, a, b, scale: float, kernel_scale=None) -> np.ndarray:
  """float32 kernel + scale * a @ b (a quantized kernel dequantized by `kernel_scale` first);
  stacked arrays [L, ...] merge per layer."""
  base = dequantize(kernel, kernel_scale) if kernel_scale is not None else np.asarray(kernel, np.float32)
  return base + np.float32(scale) * np.matmul(np.asarray(a, np.float32), np.asarray(b, np.float32))


def peft_target_regex(module_keys) -> str:
  """A PEFT `target_modules` regex (matched with re.fullmatch against module names) for exactly
  these HF module names, layer indices generalised."""
  patterns = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(k)) for k in module_keys})
  return "(" + "|".join(patterns) + ")"


def shared_or(copy, dtype):
  """The RL sampler's copy of the frozen parameters: the learner's own arrays when they are
  already in the sampler's `dtype` (a LoRA base in the compute dtype: no second copy of the
  weights; they never change and are never donated), else `copy(tree)`."""

  def frozen_copy(tree):
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return tree if all(x.dtype == dtype for x in floats) else copy(tree)

  return frozen_copy
