"""The policy loss and the KL penalty, per token. Pure functions of [B, T] arrays (jax or numpy).

`policy_loss` is verl's clipped surrogate ("vanilla" with clip-higher and the dual clip for
negative advantages); `kl_penalty` its KL estimators. The RL step sums `token_terms` over a whole
mini-batch and divides by its number of policy tokens (token-mean aggregation across microbatches);
`policy_loss` is the same on one batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOG_RATIO_BOUND = 20.0


def _xp(*xs):
  return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def token_terms(
  logprobs, old_logprobs, advantages, *, clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float = 10.0
) -> dict:
  """Per-token terms of the clipped surrogate: "pg" (the loss), "clipped" (the clipped branch is
  the larger loss), "clipped_lower" (the dual clip binds, negative advantages), "approx_kl"
  (old minus new log-prob). Advantages are [B, T] or [B] (one per sequence)."""
  xp = _xp(logprobs, old_logprobs, advantages)
  if clip_c <= 1.0:
    raise ValueError(f"the dual-clip constant must be greater than 1, got {clip_c}")
  advantages = xp.asarray(advantages, xp.float32)
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  log_ratio = xp.clip(xp.asarray(logprobs) - xp.asarray(old_logprobs), -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
  ratio = xp.exp(log_ratio)
  loss1 = -advantages * ratio
  loss2 = -advantages * xp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  clipped_loss = xp.maximum(loss1, loss2)
  loss3 = -advantages * clip_c
  negative = advantages < 0
  pg = xp.where(negative, xp.minimum(loss3, clipped_loss), clipped_loss)
  return {
    "pg": pg,
    "clipped": (loss2 > loss1).astype(xp.float32),
    "clipped_lower": ((clipped_loss > loss3) & negative).astype(xp.float32),
    "approx_kl": -log_ratio,
  }


def masked_mean(x, mask):
  xp = _xp(x, mask)
  mask = xp.asarray(mask, xp.float32)
  return (x * mask).sum() / xp.maximum(mask.sum(), 1.0)


def policy_loss(
  logprobs, old_logprobs, advantages, mask, clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float = 10.0
):
  """The PPO clipped surrogate with clip-higher and the dual clip, token mean over `mask`.

  Log-ratios are clamped to [-20, 20]. Returns (loss, metrics) with metrics "clipfrac",
  "clipfrac_lower" and "approx_kl" (token means).
  """
  terms = token_terms(logprobs, old_logprobs, advantages, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c)
  return masked_mean(terms["pg"], mask), {
    "clipfrac": masked_mean(terms["clipped"], mask),
    "clipfrac_lower": masked_mean(terms["clipped_lower"], mask),
    "approx_kl": masked_mean(terms["approx_kl"], mask),
  }


def kl_penalty(logprobs, ref_logprobs, kind: str = "low_var_kl"):
  """Per-token KL estimate between the policy and the reference from the sampled tokens'
  log-probs: "kl" (k1, log-ratio), "mse" (k2, half its square), "low_var_kl" (k3, Schulman's
  low-variance estimator: exp(ref - logp) - (ref - logp) - 1, the log-ratio clamped to [-20, 20]
  and the result to [-10, 10]), as verl."""
  xp = _xp(logprobs, ref_logprobs)
  diff = xp.asarray(logprobs) - xp.asarray(ref_logprobs)
  if kind == "kl":
    return diff
  if kind == "mse":
    return 0.5 * diff**2
  if kind == "low_var_kl":
    kl = xp.clip(-diff, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return xp.clip(xp.exp(kl) - kl - 1.0, -10.0, 10.0)
  raise ValueError(f"unknown KL estimator {kind!r}; expected 'kl', 'mse' or 'low_var_kl'")
