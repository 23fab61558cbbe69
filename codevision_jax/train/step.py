"""The train step: a pure function of (state, frozen parameters, batch), jitted over the mesh.

`state` holds what changes: {"step", "params" (the trainable parameters), "opt_state"}; `frozen`
holds parameters that do not train (the vision tower and merger when frozen). Both are plain
nested dicts of arrays (`nnx.to_pure_dict`), float32 master weights; with `compute_dtype`
bfloat16 the forward pass runs on bfloat16 copies (norms, softmax and the loss stay in float32).

The batch has a leading microbatch axis (see `data.pipeline`); the step scans over it, sums the
gradients of the summed token losses, and divides by the number of loss tokens of the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from codevision_jax import parallel
from codevision_jax.train import loss as loss_lib


@dataclasses.dataclass(frozen=True)
class StepOptions:
  compute_dtype: Any = jnp.float32
  loss_chunk: int = 0


def cast_floats(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def forward_hidden(model, mb: dict) -> jax.Array:
  """Final hidden states [b, T, H] of one microbatch.

  Image features are placed by the batch's explicit `image_index`, so the padding image and
  other hosts' patches land on no token.
  """
  vision = mb["vision"]
  pixel_values, meta = (vision.pixel_values, vision.meta) if vision.pixel_values.shape[0] else (None, None)
  return model.forward(
    mb["input_ids"],
    pixel_values,
    meta,
    mb["attention_mask"],
    mb["position_ids"],
    image_index=mb["image_index"],
    return_hidden=True,
  )


def microbatch_loss(params, frozen, mb, *, graphdef, rest, options: StepOptions):
  """(summed token loss, token count) of one microbatch."""
  dtype = options.compute_dtype
  model = nnx.merge(graphdef, cast_floats(params, dtype), cast_floats(frozen, dtype), rest)
  hidden = forward_hidden(model, mb)
  return loss_lib.chunked_token_loss(hidden, model.logits, mb["targets"], mb["loss_mask"], options.loss_chunk)


def train_step(
  state, frozen, batch, *, graphdef, rest, tx: optax.GradientTransformation, lr_schedule, options: StepOptions
):
  """One optimizer step over the batch's microbatches -> (new state, metrics)."""
  params = state["params"]
  grad_fn = jax.value_and_grad(microbatch_loss, has_aux=True)

  def accumulate(carry, mb):
    grads, loss_sum, count = carry
    (l, n), g = grad_fn(params, frozen, mb, graphdef=graphdef, rest=rest, options=options)
    return (jax.tree.map(jnp.add, grads, g), loss_sum + l, count + n), None

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
  (grads, loss_sum, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), batch)
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state["opt_state"], params)
  new_params = optax.apply_updates(params, updates)
  metrics = {
    "loss": loss_sum / denom,
    "loss_tokens": count,
    "grad_norm": optax.tree.norm(grads),
    "learning_rate": lr_schedule(state["step"]),
    "tokens": jnp.sum(batch["attention_mask"] > 0).astype(jnp.float32),
  }
  return {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}, metrics


# ---- shardings -------------------------------------------------------------------------------------


def batch_shardings(mesh, rules, batch: dict, *, stacked: bool = True) -> dict:
  """NamedShardings of a batch (a pytree of arrays): the row axis, or the patch axis of the vision
  inputs, over the batch mesh axes. `stacked`: the arrays have a leading microbatch axis [k, ...]
  (the SFT step's batches); else one microbatch (`position_ids` [3, b, T], the rest [b or P, ...])."""

  def sharding(path, x):
    axis = (1 if path[0].key == "position_ids" else 0) + int(stacked)
    return parallel.batch_sharding(mesh, x.ndim, rules, batch_axis=axis)

  return jax.tree_util.tree_map_with_path(sharding, batch)


def state_shardings(param_state: nnx.State, opt_state, mesh, rules):
  """Shardings of {"step", "params", "opt_state"} from the parameters' logical axes: optimizer
  moments follow their parameter, scalars are replicated."""
  param_sh = nnx.to_pure_dict(parallel.state_shardings(param_state, mesh, rules))
  param_struct = jax.tree.structure(param_sh)
  replicated = NamedSharding(mesh, P())

  def like_params(node):
    try:
      if jax.tree.structure(node) == param_struct:
        return param_sh
    except Exception:  # noqa: BLE001 - structures that cannot be compared are not params-like.
      pass
    return None

  def opt_sh(node):
    sh = like_params(node)
    if sh is not None:
      return sh
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(*[opt_sh(x) for x in node])
    if isinstance(node, (tuple, list)):
      return type(node)(opt_sh(x) for x in node)
    if isinstance(node, dict):
      return {k: opt_sh(v) for k, v in node.items()}
    return replicated

  return {"step": replicated, "params": param_sh, "opt_state": opt_sh(opt_state)}
