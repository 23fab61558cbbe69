"""Flax NNX Qwen-VL models, chosen by `model_type`."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

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


def build_model(config: VLConfig, *, seed: int = 0, param_dtype=jnp.float32, attention_backend: str = "xla"):
  """A randomly initialised model (normal(0.02) matrices, unit norms, zero biases)."""
  cls = model_class(config.model_type)
  return cls(config, rngs=nnx.Rngs(seed), param_dtype=param_dtype, attention_backend=attention_backend)


def abstract_model(config: VLConfig, *, param_dtype=jnp.float32, attention_backend: str = "xla"):
  """The model with shapes only (no memory): for loading checkpoints and counting parameters."""
  return nnx.eval_shape(lambda: build_model(config, param_dtype=param_dtype, attention_backend=attention_backend))


__all__ = ["VLConfig", "TextConfig", "VisionConfig", "load_config", "model_class", "build_model", "abstract_model"]
