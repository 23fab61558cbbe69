"""Choosing the next token from logits: greedy, temperature, top-k, top-p; and policy log-probs.

The processing order is transformers' (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper`):

* temperature T > 0 divides the logits by T; T == 0 means greedy (argmax, filters ignored);
* top-k (k > 0) keeps the tokens whose scaled logit is at least the k-th largest (ties with the
  k-th are kept, as in transformers);
* top-p (0 < p < 1) keeps, among the survivors, the smallest set of most likely tokens whose
  probability reaches p: a token is kept iff the probability of the tokens ranked strictly above
  it is below p (so the most likely token is always kept).

The log-probability returned with each token is under the *policy*: the model's distribution at
temperature 1 over the whole vocabulary, `log_softmax(logits)[token]`, whatever temperature and
filters chose the token. That is what the RL loss compares against (its training forward computes
the same quantity), so importance ratios are exactly 1 for unchanged parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def policy_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log_softmax(logits)[tokens] in float32: logits [B, V], tokens [B] -> [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def filtered_sorted_logits(scaled: jax.Array, top_k, top_p) -> tuple[jax.Array, jax.Array]:
  """Top-k then top-p on scaled logits [B, V].

  Returns (order [B, V]: token ids from most to least likely, logits in that order with the
  removed tokens at -inf). `top_k` <= 0 and `top_p` >= 1 disable their filter; both may be traced.
  """
  vocab = scaled.shape[-1]
  order = jnp.argsort(-scaled, axis=-1, stable=True)
  ranked = jnp.take_along_axis(scaled, order, axis=-1)
  k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, vocab)
  kth = jax.lax.dynamic_index_in_dim(ranked, k - 1, axis=-1, keepdims=True)
  keep = (jnp.asarray(top_k) <= 0) | (ranked >= kth)
  ranked = jnp.where(keep, ranked, -jnp.inf)
  probs = jax.nn.softmax(ranked, axis=-1)
  mass_above = jnp.cumsum(probs, axis=-1) - probs
  top_p = jnp.asarray(top_p, jnp.float32)
  keep = keep & ((top_p >= 1.0) | (mass_above < top_p))
  keep = keep.at[:, 0].set(True)
  return order, jnp.where(keep, ranked, -jnp.inf)


def choose_tokens(
  logits: jax.Array, keys: jax.Array, temperature, top_k, top_p, *, greedy: bool, filtered: bool
) -> tuple[jax.Array, jax.Array]:
  """The next token of each row and its policy log-probability.

  logits [B, V]; keys [B] PRNG keys (one per row, already specific to this step). `greedy` and
  `filtered` are static (they pick the code path); temperature, top_k and top_p may be traced.
  """
  logits = logits.astype(jnp.float32)
  if greedy:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    scaled = logits / jnp.asarray(temperature, jnp.float32)
    if filtered:
      order, ranked = filtered_sorted_logits(scaled, top_k, top_p)
      idx = jax.vmap(jax.random.categorical)(keys, ranked)
      tokens = jnp.take_along_axis(order, idx[:, None], axis=-1)[:, 0].astype(jnp.int32)
    else:
      tokens = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
  return tokens, policy_logprobs(logits, tokens)
