"""The RL update: pure functions of (parameters, microbatch), jitted over the mesh by the learner
(`rl.learner`).

A mini-batch is a sequence of packed microbatches (`rl.batch`). The learner

1. computes, before the first update, the log-probs of the sampled tokens under its current
   parameters (the "old" policy of the clipped ratio) and under the frozen reference in one
   fused pass (`old_and_ref_logprobs`); a microbatch whose old policy is the current one (the
   first mini-batch of a round with one PPO epoch) skips it: its gradient step takes the old
   log-probs as its own, stopped, and runs the reference forward itself (`accumulate`);
2. for each microbatch, adds the gradient of the summed per-token objective (clipped surrogate +
   kl_coef * KL to the reference, over policy tokens) and the metric sums into an accumulator
   on device (`accumulate`, its accumulator donated: no host sync inside a mini-batch);
3. divides by the mini-batch's number of policy tokens (token-mean aggregation over the whole
   mini-batch, however it is split or packed), applies the optimizer and zeroes the gradient sum
   (`apply_accumulated`).

Parameters are the plain nested dicts of the SFT step (float32 master weights; the forward runs
in `compute_dtype`), and the trainable/frozen split is the same. `logprobs`, `microbatch_grads`
and `apply_grads` are the unfused pieces (benchmarks/rl_step.py's reference learner).
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
PASS_SUMS = ("mismatch", "mismatch_tokens")  # |sampler - old| log-prob over policy tokens, and their count


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
  return loss_lib.chunked_target_logprobs(forward_hidden(model, mb), model.logits, mb["targets"], options.loss_chunk)


def logprobs(params, frozen, mb, *, graphdef, rest, options: RLStepOptions) -> jax.Array:
  """Log-probs [b, T] of each position's target token under `params` (0 where no loss)."""
  logp, _ = _policy_logprobs(params, frozen, mb, graphdef=graphdef, rest=rest, options=options)
  return jnp.where(mb["loss_mask"] > 0, logp, 0.0)


def _objective(params, frozen, mb, *, graphdef, rest, options: RLStepOptions, old=None, ref=None):
  logp, entropy = _policy_logprobs(params, frozen, mb, graphdef=graphdef, rest=rest, options=options)
  mask = mb["loss_mask"].astype(jnp.float32)
  old = mb["old_logprobs"] if old is None else old
  old = jax.lax.stop_gradient(logp) if isinstance(old, str) else old  # "current": the old policy.
  ref = mb["ref_logprobs"] if ref is None else ref
  terms = rl_loss.token_terms(
    logp, old, mb["advantages"], clip_low=options.clip_low, clip_high=options.clip_high, clip_c=options.clip_c
  )
  kl = rl_loss.kl_penalty(logp, ref, options.kl_kind) if options.kl_coef else jnp.zeros_like(logp)
  total = jnp.sum((terms["pg"] + options.kl_coef * kl) * mask)
  sums = {
    "pg_loss": terms["pg"],
    "kl": kl,
    "clipfrac": terms["clipped"],
    "clipfrac_lower": terms["clipped_lower"],
    "approx_kl": terms["approx_kl"],
    "entropy": entropy,
  }
  sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
  sums["tokens"] = jnp.sum(mask)
  return total, (jax.lax.stop_gradient(sums), jax.lax.stop_gradient(logp))


def microbatch_grads(params, frozen, mb, *, graphdef, rest, options: RLStepOptions):
  """(gradient of the summed per-token objective, float32; sums of the metric terms)."""
  (_, (sums, _)), grads = jax.value_and_grad(_objective, has_aux=True)(
    params, frozen, mb, graphdef=graphdef, rest=rest, options=options
  )
  return jax.tree.map(lambda g: g.astype(jnp.float32), grads), sums


def apply_grads(state, grads, tokens, *, tx: optax.GradientTransformation, lr_schedule):
  """One optimizer step with the summed gradients divided by the mini-batch's policy tokens."""
  grads = jax.tree.map(lambda g: g / jnp.maximum(tokens, 1.0), grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  metrics = {"grad_norm": optax.tree.norm(grads), "learning_rate": lr_schedule(state["step"])}
  return {
    "step": state["step"] + 1,
    "params": optax.apply_updates(state["params"], updates),
    "opt_state": opt_state,
  }, metrics


# ---- the fused learner (`rl.learner`) ---------------------------------------------------------------


def _mismatch(sample, old, mask) -> dict:
  return {"mismatch": jnp.sum(jnp.abs(sample - old) * mask), "mismatch_tokens": jnp.sum(mask)}


def old_and_ref_logprobs(
  params, reference, frozen, mb, *, with_ref: bool, graphdef, rest, options: RLStepOptions
) -> dict:
  """One pass before any update: "old_logprobs" under `params`, "ref_logprobs" under
  `reference` (zeros without `with_ref`), both [b, T] and 0 where no loss, and the `PASS_SUMS`
  of the sampler's log-probs against the old ones."""
  bound = dict(graphdef=graphdef, rest=rest, options=options)
  old = logprobs(params, frozen, mb, **bound)
  ref = logprobs(reference, frozen, mb, **bound) if with_ref else jnp.zeros_like(old)
  mask = (mb["loss_mask"] > 0).astype(jnp.float32)
  return {"old_logprobs": old, "ref_logprobs": ref, **_mismatch(mb["sample_logprobs"], old, mask)}


def init_accumulator(params) -> dict:
  """Zero gradient sums (float32, shaped as `params`), the mini-batch's policy tokens and the
  round's metric sums (`METRIC_SUMS`, `PASS_SUMS`)."""
  return {
    "grads": jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params),
    "tokens": jnp.zeros((), jnp.float32),
    "sums": {k: jnp.zeros((), jnp.float32) for k in METRIC_SUMS + PASS_SUMS},
  }


def accumulate(
  acc, params, reference, frozen, mb, *, old_is_current: bool, ref_in_step: bool, graphdef, rest, options: RLStepOptions
) -> dict:
  """`acc` (`init_accumulator`; donate it) plus one microbatch's gradient and metric sums.

  `old_is_current`: the old policy is `params` (no `old_logprobs` in `mb`): the ratio is taken
  against the step's own log-probs, stopped, and their mismatch to the sampler's is summed.
  `ref_in_step`: the reference log-probs are computed here from `reference` (no `ref_logprobs`
  in `mb`)."""
  bound = dict(graphdef=graphdef, rest=rest, options=options)
  ref = None
  if options.kl_coef and ref_in_step:
    ref = jax.lax.stop_gradient(logprobs(reference, frozen, mb, **bound))
  elif ref_in_step:
    ref = jnp.zeros(mb["loss_mask"].shape, jnp.float32)
  (_, (sums, logp)), grads = jax.value_and_grad(_objective, has_aux=True)(
    params, frozen, mb, old="current" if old_is_current else None, ref=ref, **bound
  )
  if old_is_current:
    mask = (mb["loss_mask"] > 0).astype(jnp.float32)
    sums = {**sums, **_mismatch(mb["sample_logprobs"], logp, mask)}
  return {
    "grads": jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc["grads"], grads),
    "tokens": acc["tokens"] + sums["tokens"],
    "sums": {k: v + sums[k] if k in sums else v for k, v in acc["sums"].items()},
  }


def add_sums(acc, part: dict) -> dict:
  """`acc` with `part`'s entries added to its metric sums (e.g. a pass's `PASS_SUMS`)."""
  return {**acc, "sums": {k: v + part[k] if k in part else v for k, v in acc["sums"].items()}}


def apply_accumulated(state, acc, *, tx: optax.GradientTransformation, lr_schedule):
  """One optimizer step with the accumulated gradients divided by the mini-batch's policy
  tokens -> (new state, `acc` with gradients and tokens zeroed (its sums kept), metrics)."""
  state, metrics = apply_grads(state, acc["grads"], acc["tokens"], tx=tx, lr_schedule=lr_schedule)
  return (
    state,
    {"grads": jax.tree.map(jnp.zeros_like, acc["grads"]), "tokens": jnp.zeros_like(acc["tokens"]), "sums": acc["sums"]},
    metrics,
  )
