"""Chunked LM-head computations equal the unchunked ones, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codevision_jax.train import loss


@pytest.fixture
def inputs():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.standard_normal((2, 12, 8)), jnp.float32)
  head = jnp.asarray(rng.standard_normal((8, 30)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 30, (2, 12)), jnp.int32)
  mask = jnp.asarray(rng.integers(0, 2, (2, 12)), jnp.int32)
  return hidden, head, targets, mask


def test_chunked_token_loss_equals_the_whole(inputs):
  hidden, head, targets, mask = inputs

  def total(h, w, chunk):
    s, n = loss.chunked_token_loss(h, lambda x: x @ w, targets, mask, chunk)
    return s / n

  for chunk in (3, 4, 6):
    np.testing.assert_allclose(total(hidden, head, chunk), total(hidden, head, 0), rtol=1e-6)
    g0, g1 = jax.grad(total, (0, 1))(hidden, head, 0), jax.grad(total, (0, 1))(hidden, head, chunk)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)
  with pytest.raises(ValueError, match="does not divide"):
    total(hidden, head, 5)


def test_chunked_target_logprobs_equal_log_softmax(inputs):
  hidden, head, targets, _ = inputs
  logp = jax.nn.log_softmax(hidden @ head, axis=-1)
  want = np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]
  entropy = -np.sum(np.exp(logp) * logp, -1)
  for chunk in (0, 4):
    got, ent = loss.chunked_target_logprobs(hidden, lambda x: x @ head, targets, chunk)
    assert got.shape == ent.shape == (2, 12)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent, entropy, rtol=1e-5, atol=1e-6)
