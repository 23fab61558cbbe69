"""The SFT loss: token-level cross-entropy summed over assistant tokens, with the count.

The step divides the sum by the count over all microbatches, which gives the token mean over the
whole (accumulated) batch. `chunked_token_loss` never holds the full [B, T, vocab] logits: it maps
over sequence chunks and recomputes each chunk's logits in the backward pass.
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


def chunked_token_loss(hidden: jax.Array, logits_fn, targets: jax.Array, mask: jax.Array,
                       chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """`token_loss(logits_fn(hidden), ...)` computed `chunk` positions at a time (0: at once)."""
  b, t, h = hidden.shape
  if not chunk or chunk >= t:
    return token_loss(logits_fn(hidden), targets, mask)
  if t % chunk:
    raise ValueError(f"loss chunk {chunk} does not divide the sequence length {t}")
  n = t // chunk

  def split(x):
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def one(args):
    hc, tc, mc = args
    return token_loss(logits_fn(hc), tc, mc)

  sums, counts = jax.lax.map(one, (split(hidden), split(targets), split(mask)))
  return jnp.sum(sums), jnp.sum(counts)
