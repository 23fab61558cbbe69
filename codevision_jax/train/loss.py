"""Token-level losses over the LM head, computed a sequence chunk at a time.

The SFT loss is cross-entropy summed over assistant tokens, with their count; the step divides
the sum by the count over all microbatches, which gives the token mean over the whole
(accumulated) batch. `chunked` never holds the full [B, T, vocab] logits: it maps a function over
sequence chunks and recomputes each chunk's logits in the backward pass. RL uses the same chunks
for the log-probs and entropy of the sampled tokens (`target_logprobs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sum of -log p(target) over masked positions (float32), and the number of those positions."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  mask = mask.astype(jnp.float32)
  return jnp.sum((logz - picked) * mask), jnp.sum(mask)


def target_logprobs(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log p(target) and the entropy of the distribution at every position (float32, [..., T])."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return picked, -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def chunked(fn, chunk: int, *arrays):
  """`fn(*arrays)` on sequence chunks of `chunk` positions of [B, T, ...] arrays, rematerialised in
  the backward pass. Returns fn's outputs stacked on a leading chunk axis (0: one call, no axis)."""
  b, t = arrays[0].shape[:2]
  if not chunk or chunk >= t:
    return fn(*arrays)
  if t % chunk:
    raise ValueError(f"loss chunk {chunk} does not divide the sequence length {t}")
  n = t // chunk

  def split(x):
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

  return jax.lax.map(jax.checkpoint(lambda args: fn(*args)), tuple(split(x) for x in arrays))


def chunked_token_loss(
  hidden: jax.Array, logits_fn, targets: jax.Array, mask: jax.Array, chunk: int = 0
) -> tuple[jax.Array, jax.Array]:
  """`token_loss(logits_fn(hidden), ...)` computed `chunk` positions at a time (0: at once)."""
  sums, counts = chunked(lambda h, tg, m: token_loss(logits_fn(h), tg, m), chunk, hidden, targets, mask)
  return jnp.sum(sums), jnp.sum(counts)


def chunked_target_logprobs(
  hidden: jax.Array, logits_fn, targets: jax.Array, chunk: int = 0
) -> tuple[jax.Array, jax.Array]:
  """`target_logprobs(logits_fn(hidden), targets)` computed `chunk` positions at a time: [B, T]."""
  b, t = targets.shape
  out = chunked(lambda h, tg: target_logprobs(logits_fn(h), tg), chunk, hidden, targets)
  if out[0].shape == (b, t):
    return out
  return tuple(jnp.moveaxis(x, 0, 1).reshape(b, t) for x in out)
