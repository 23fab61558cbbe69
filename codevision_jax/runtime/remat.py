"""Rematerialisation: recompute each decoder layer's (and vision block's) activations in the
backward pass instead of storing them, with a `jax.checkpoint` policy chosen by name.

Applied from outside the model (no model code changes): every layer's class is swapped for a
subclass whose `__call__` is wrapped in `nnx.remat`. Parameters and names are unchanged. A scanned
decoder (`scan_layers`) has one stacked layer module, whose swapped class the scan body runs: the
policy applies to each layer inside the scan.

Policies: "none" (store everything), "full" (store nothing but the layer inputs), "dots"
(store matmul outputs without batch dimensions), "dots_all" (store every matmul output).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "dots_all": jax.checkpoint_policies.dots_saveable,
}


@functools.cache
def _remat_class(cls, policy: str):
  call = nnx.remat(cls.__call__, policy=POLICIES[policy], prevent_cse=True)
  return type(f"Remat{cls.__name__}", (cls,), {"__call__": call, "__module__": cls.__module__})


def apply_remat(model, policy: str):
  """Wraps the decoder layers and vision blocks of `model` (in place); returns the model."""
  if policy == "none":
    return model
  if policy not in POLICIES:
    raise ValueError(f"remat policy {policy!r} is not one of {['none', *POLICIES]}")
  text = model.model.language_model
  decoder = [text.layers] if text.scan_layers else list(text.layers)
  layers = decoder + list(getattr(model.model.visual, "blocks", []))
  for layer in layers:
    base = getattr(type(layer), "_remat_base", type(layer))
    cls = _remat_class(base, policy)
    cls._remat_base = base
    layer.__class__ = cls
  return model
