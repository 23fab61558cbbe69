"""Layers shared by every Qwen-VL family: linear, embedding, norms, MLPs.

Parameter names follow HF where the layout is HF's (`weight` of norms and embeddings, `bias`);
a linear layer's matrix is `kernel` in JAX's [in, out] layout, which the checkpoint mapping
transposes to HF's [out, in] `weight`. Every parameter carries logical axis names
(`out_sharding` metadata); `codevision_jax.parallel` maps them to mesh axes. No mesh axis is
named here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def param(value: jax.Array, axes: Axes) -> nnx.Param:
  """A parameter annotated with logical axis names (placed later, by the sharding rules)."""
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
  return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
  """y = x @ kernel + bias, computed in the input's dtype.

  `models.lora.apply` may add LoRA adapters (`lora_a` [in, r], `lora_b` [r, out], `lora_scale`):
  y += lora_scale * (x @ lora_a) @ lora_b; and a quantized frozen kernel (integer `kernel` with a
  per-output-column `kernel_scale`): x @ kernel * kernel_scale.
  """

  def __init__(
    self, in_features: int, out_features: int, *, bias: bool, axes: Axes, rngs: nnx.Rngs, param_dtype=jnp.float32
  ):
    self.kernel = param(_normal(rngs, (in_features, out_features), param_dtype), axes)
    self.bias = param(jnp.zeros((out_features,), param_dtype), (axes[1],)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x, self.kernel[...].astype(x.dtype), preferred_element_type=None)
    kernel_scale = getattr(self, "kernel_scale", None)
    if kernel_scale is not None:  # A quantized base: the integer matmul, then each column's scale.
      y = y * kernel_scale[...].astype(x.dtype)
    lora_a = getattr(self, "lora_a", None)
    if lora_a is not None:
      down = jnp.dot(x, lora_a[...].astype(x.dtype))
      y = y + jnp.dot(down, self.lora_b[...].astype(x.dtype)) * jnp.asarray(self.lora_scale, x.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding table [vocab, hidden], laid out as HF's `embed_tokens.weight`."""

  def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.weight = param(_normal(rngs, (num_embeddings, features), param_dtype), ("vocab", "embed"))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.weight[...], ids, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits against the table (tied LM head)."""
    return jnp.dot(x, self.weight[...].astype(x.dtype).T)


class RMSNorm(nnx.Module):
  """HF's Qwen RMSNorm: normalise in float32, cast back, then scale by `weight`."""

  def __init__(self, dim: int, *, eps: float, axes: Axes = ("norm",), param_dtype=jnp.float32):
    self.weight = param(jnp.ones((dim,), param_dtype), axes)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(dtype) * x32.astype(dtype)


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm (with bias), computed in float32 and cast back."""

  def __init__(self, dim: int, *, eps: float, axes: Axes = ("norm",), param_dtype=jnp.float32):
    self.weight = param(jnp.ones((dim,), param_dtype), axes)
    self.bias = param(jnp.zeros((dim,), param_dtype), axes)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


def activation(name: str):
  """HF's ACT2FN for the activations Qwen-VL uses."""
  if name == "silu":
    return jax.nn.silu
  if name in ("gelu", "gelu_exact"):
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  raise ValueError(f"unsupported activation {name!r}")


class GatedMLP(nnx.Module):
  """down(act(gate(x)) * up(x)): the SwiGLU MLP of the decoder and of Qwen2.5-VL's vision blocks."""

  def __init__(self, hidden: int, intermediate: int, *, act: str, bias: bool, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.gate_proj = Linear(hidden, intermediate, bias=bias, axes=("embed", "mlp"), rngs=rngs, param_dtype=param_dtype)
    self.up_proj = Linear(hidden, intermediate, bias=bias, axes=("embed", "mlp"), rngs=rngs, param_dtype=param_dtype)
    self.down_proj = Linear(intermediate, hidden, bias=bias, axes=("mlp", "embed"), rngs=rngs, param_dtype=param_dtype)
    self.act = activation(act)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PlainMLP(nnx.Module):
  """linear_fc2(act(linear_fc1(x))): Qwen3-VL's vision MLP."""

  def __init__(self, hidden: int, intermediate: int, *, act: str, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.linear_fc1 = Linear(hidden, intermediate, bias=True, axes=("embed", "mlp"), rngs=rngs, param_dtype=param_dtype)
    self.linear_fc2 = Linear(intermediate, hidden, bias=True, axes=("mlp", "embed"), rngs=rngs, param_dtype=param_dtype)
    self.act = activation(act)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_fc2(self.act(self.linear_fc1(x)))
