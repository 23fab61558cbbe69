"""Device mesh and logical-axis sharding.

Model code names logical axes only (`embed`, `mlp`, `heads`, `kv_heads`, `vocab`, ...). This module
builds a mesh with axes (`data`, `fsdp`, `tensor`) from the config and maps logical names to mesh
axes with rules from the config, MaxText style:

    rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ...)

A logical name without a rule, or whose mesh axis does not divide the dimension, is replicated
(the fallback is logged once per name so a bad rule is visible, never silent).
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: parameters sharded FSDP-style over `fsdp` on their model dimension and
# Megatron-style over `tensor` on heads / MLP width / vocabulary; activations' batch over
# (`data`, `fsdp`).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("qkv", "tensor"),
  ("vocab", "tensor"),
  ("patch", None),
  ("norm", None),
  ("layers", None),  # The leading axis of scanned (stacked) decoder layers: never sharded.
)

_warned: set = set()


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None, devices=None) -> Mesh:
  """A mesh over (`data`, `fsdp`, `tensor`).

  `shape` maps axis -> size (or is a 3-sequence); one size may be -1 to take the remaining
  devices. Default: all devices on `fsdp`.
  """
  devices = list(jax.devices() if devices is None else devices)
  if shape is None:
    shape = {"data": 1, "fsdp": -1, "tensor": 1}
  if not isinstance(shape, dict):
    shape = dict(zip(MESH_AXES, shape))
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh axes {sorted(unknown)} are not among {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot fill mesh {shape}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, {len(devices)} are available"
    )
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(
  logical: Iterable[str | None] | None, rules=DEFAULT_RULES, shape=None, mesh: Mesh | None = None
) -> P:
  """Logical axis names -> PartitionSpec. With `shape` and `mesh`, drops a mesh axis that does
  not divide its dimension or is already used by an earlier dimension."""
  if logical is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(logical):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    keep = []
    for a in axes:
      if a in used:
        continue
      if mesh is not None and shape is not None:
        size = int(np.prod([mesh.shape[x] for x in keep + [a]]))
        if shape[i] % size:
          key = (name, a, shape[i])
          if key not in _warned:
            _warned.add(key)
            logging.info(
              "dimension %d (%s, size %d) is not divisible by mesh axis %r; replicated", i, name, shape[i], a
            )
          continue
      keep.append(a)
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return P(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
  """A NamedSharding for every variable of `state` (abstract or concrete), from its logical axes."""

  def one(var):
    logical = var.get_metadata().get("out_sharding")
    spec = logical_to_spec(logical, rules, tuple(var.get_value().shape), mesh)
    return NamedSharding(mesh, spec)

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def variable_sharding(var: nnx.Variable, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  logical = var.get_metadata().get("out_sharding")
  return NamedSharding(mesh, logical_to_spec(logical, rules, tuple(var.get_value().shape), mesh))


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
  """Places every parameter of `model` on `mesh` by its logical axes (in place); returns it."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES, batch_axis: int = 0) -> NamedSharding:
  """Sharding of an input array whose `batch_axis` is the batch (over data x fsdp)."""
  logical = [None] * ndim
  logical[batch_axis] = "batch"
  return NamedSharding(mesh, logical_to_spec(logical, rules))


def rules_from_config(rules) -> tuple:
  """Accepts rules as a sequence of pairs (ml_collections gives lists); normalises to tuples."""
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)
