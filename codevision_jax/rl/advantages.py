"""Advantage estimators: scores of N trajectories and their group ids in, advantages [N] out.

Pure functions of numpy or jax arrays (the same kind comes back), chosen by name:

    adv = advantages.ESTIMATORS["grpo"](scores, group_ids)
    adv = advantages.grpo(scores, group_ids, scale_by_std=False)   # Dr. GRPO

A group is the rollouts of one prompt. Groups are found by comparing ids, so any integer labels
work and the functions run under `jax.jit` (the pairwise comparison is N x N: fine for the few
thousand trajectories of a round).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def grpo(scores, group_ids, eps: float = 1e-6, scale_by_std: bool = True):
  """(score - group mean) / (group's unbiased std + eps), as verl's GRPO outcome advantage.

  A group of one has mean 0 and std 1 (verl's convention). `scale_by_std=False` is Dr. GRPO: the
  score minus the group mean.
  """
  xp = _xp(scores)
  scores = xp.asarray(scores, xp.float32)
  same = (xp.asarray(group_ids)[:, None] == xp.asarray(group_ids)[None, :]).astype(xp.float32)
  count = same.sum(axis=1)
  mean = same @ scores / count
  var = (same * (scores[None, :] - mean[:, None]) ** 2).sum(axis=1) / xp.maximum(count - 1, 1)
  single = count == 1
  mean = xp.where(single, 0.0, mean)
  std = xp.where(single, 1.0, xp.sqrt(var))
  centred = scores - mean
  return (centred / (std + eps) if scale_by_std else centred).astype(xp.float32)


ESTIMATORS = {
  "grpo": grpo,
  "dr_grpo": functools.partial(grpo, scale_by_std=False),
}
"""Advantage estimators by name (`rl.advantage` in the configs)."""
