"""The RL update: pure functions of (parameters, microbatch), jitted over the mesh by the loop.

A mini-batch is a list of packed microbatches (`rl.batch`). The learner

1. computes the log-probs of the sampled tokens under its current parameters before the first
   update (`logprobs`; the "old" policy of the clipped ratio) and under the frozen reference
   (the same function with the reference's parameters);
2. for each microbatch, takes the gradient of the summed per-token objective
   (clipped surrogate + kl_coef * KL to the reference, over policy tokens) and adds it up
   (`microbatch_grads`);
3. divides by the mini-batch's number of policy tokens (token-mean aggregation over the whole
   mini-batch, however it is split) and applies the optimizer (`apply_grads`).

Parameters are the plain nested dicts of the SFT step (float32 master weights; the forward runs
in `compute_dtype`), and the trainable/frozen split is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from codevision_jax.rl import loss as rl_loss
from codevision_jax.train import loss as loss_lib
from codevision_jax.train.step import cast_floats, forward_hidden

METRIC_SUMS = ("pg_loss", "kl", "clipfrac", "clipfrac_lower", "approx_kl", "entropy", "tokens")


@dataclasses.dataclass(frozen=True)
class RLStepOptions:
  compute_dtype: Any = jnp.float32
  loss_chunk: int = 0
  clip_low: float = 0.2
  clip_high: float = 0.28
  clip_c: float = 10.0
  kl_coef: float = 0.001
  kl_kind: str = "low_var_kl"


def _policy_logprobs(params, frozen, mb, *, graphdef, rest, options):
  dtype = options.compute_dtype
  model = nnx.merge(graphdef, cast_floats(params, dtype), cast_floats(frozen, dtype), rest)
  return loss_lib.chunked_target_logprobs(forward_hidden(model, mb), model.logits, mb["targets"],
                                          options.loss_chunk)


def logprobs(params, frozen, mb, *, graphdef, rest, options: RLStepOptions) -> jax.Array:
  """Log-probs [b, T] of each position's target token under `params` (0 where no loss)."""
  logp, _ = _policy_logprobs(params, frozen, mb, graphdef=graphdef, rest=rest, options=options)
  return jnp.where(mb["loss_mask"] > 0, logp, 0.0)


def _objective(params, frozen, mb, *, graphdef, rest, options: RLStepOptions):
  logp, entropy = _policy_logprobs(params, frozen, mb, graphdef=graphdef, rest=rest, options=options)
  mask = mb["loss_mask"].astype(jnp.float32)
  terms = rl_loss.token_terms(logp, mb["old_logprobs"], mb["advantages"], clip_low=options.clip_low,
                              clip_high=options.clip_high, clip_c=options.clip_c)
  kl = (rl_loss.kl_penalty(logp, mb["ref_logprobs"], options.kl_kind) if options.kl_coef
        else jnp.zeros_like(logp))
  total = jnp.sum((terms["pg"] + options.kl_coef * kl) * mask)
  sums = {"pg_loss": terms["pg"], "kl": kl, "clipfrac": terms["clipped"],
          "clipfrac_lower": terms["clipped_lower"], "approx_kl": terms["approx_kl"],
          "entropy": entropy}
  sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
  sums["tokens"] = jnp.sum(mask)
  return total, jax.lax.stop_gradient(sums)


def microbatch_grads(params, frozen, mb, *, graphdef, rest, options: RLStepOptions):
  """(gradient of the summed per-token objective, float32; sums of the metric terms)."""
  (_, sums), grads = jax.value_and_grad(_objective, has_aux=True)(
      params, frozen, mb, graphdef=graphdef, rest=rest, options=options)
  return jax.tree.map(lambda g: g.astype(jnp.float32), grads), sums


def apply_grads(state, grads, tokens, *, tx: optax.GradientTransformation, lr_schedule):
  """One optimizer step with the summed gradients divided by the mini-batch's policy tokens."""
  grads = jax.tree.map(lambda g: g / jnp.maximum(tokens, 1.0), grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  metrics = {"grad_norm": optax.tree.norm(grads), "learning_rate": lr_schedule(state["step"])}
  return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
          "opt_state": opt_state}, metrics
