"""Flax NNX Qwen-VL models, chosen by `model_type`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from codevision_jax.models.attention import resolve_backend
from codevision_jax.models.config import SUPPORTED_MODEL_TYPES, TextConfig, VisionConfig, VLConfig, load_config


def model_class(model_type: str):
  """The NNX class of a family, by HF `model_type`."""
  if model_type == "qwen2_5_vl":
    from codevision_jax.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration
  if model_type == "qwen3_vl":
    from codevision_jax.models.qwen3_vl import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration
  raise ValueError(f"model_type {model_type!r} is not supported; expected one of {list(SUPPORTED_MODEL_TYPES)}")


def resolve_attention_backend(name: str) -> str:
  """The attention backend `name` means on this process's devices (JAX's default platform):
  "auto" is cudnn on NVIDIA GPUs, splash on TPUs, xla elsewhere (`attention.resolve_backend`).
  Every model build and `run_setup.attention_backend` resolve "auto" here."""
  return resolve_backend(name, jax.default_backend())


def build_model(
  config: VLConfig, *, seed: int = 0, param_dtype=jnp.float32, attention_backend: str = "xla", scan_layers: bool = False
):
  """A randomly initialised model (normal(0.02) matrices, unit norms, zero biases);
  `attention_backend` "auto" is the default platform's choice (`resolve_attention_backend`);
  `scan_layers`: the decoder layers stacked and run by a scan (`text.TextModel`)."""
  cls = model_class(config.model_type)
  attention_backend = resolve_attention_backend(attention_backend)
  return cls(
    config, rngs=nnx.Rngs(seed), param_dtype=param_dtype, attention_backend=attention_backend, scan_layers=scan_layers
  )


class _ShapeOnlyKeys:
  """Stands in for `nnx.Rngs` when only shapes are built: every stream gives one constant key.

  Under tracing each `nnx.Rngs` draw updates a counter variable at a cost linear in the trace so
  far, which makes an abstract 72B build take ~25 s; with constant keys it takes ~1 s.
  """

  def __getattr__(self, stream):
    if stream.startswith("_"):
      raise AttributeError(stream)
    return lambda: jax.random.key(0)


def abstract_model(
  config: VLConfig, *, param_dtype=jnp.float32, attention_backend: str = "xla", scan_layers: bool = False
):
  """The model with shapes only (no memory): for loading checkpoints and counting parameters."""
  cls = model_class(config.model_type)
  attention_backend = resolve_attention_backend(attention_backend)
  return nnx.eval_shape(
    lambda: cls(
      config,
      rngs=_ShapeOnlyKeys(),
      param_dtype=param_dtype,
      attention_backend=attention_backend,
      scan_layers=scan_layers,
    )
  )


__all__ = [
  "VLConfig",
  "TextConfig",
  "VisionConfig",
  "load_config",
  "model_class",
  "build_model",
  "abstract_model",
  "resolve_attention_backend",
]
