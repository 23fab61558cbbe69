"""Sampler replicas for RL over several JAX processes.

The learner trains on the global mesh (every device of every process). Rollouts cannot run there:
the processes' trajectories have different lengths and tool waits, so a jitted decode step over
all devices would keep them in lockstep. Each process therefore samples its share of a round's
prompts on its own replica of the policy, held by its own devices:

* `local_mesh(mesh)`: this process's block of the global mesh, with the same axis names, so the
  replica is sharded over its devices by the same logical-axis rules;
* `ReplicaPlacement`: where each variable of a tree lives on the replicas. `to_replicas(tree)`
  reshards the learner's arrays device to device (one jitted copy whose output is the replica
  layout, replicated across processes: XLA's collectives move the shards, nothing goes through a
  host), then keeps this process's shards as arrays on its local mesh;
* `share(n)`: the contiguous part of n prompts this process rolls out;
* `allgather_objects(obj)`: every process's `obj` (trajectories, scores), so that all processes
  build the same learner batches; host to host through the coordination service, never through a
  device.

With one process none of this is used: the sampler shares the learner's mesh.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from codevision_jax import parallel


def local_shape(mesh: Mesh, processes: int) -> tuple[int, ...]:
  """The shape of one process's block of `mesh` when its devices are in process order: the
  leading axes are split among the processes."""
  left, shape = processes, []
  for name, size in mesh.shape.items():
    if left == 1:
      shape.append(size)
    elif size % left == 0:
      shape.append(size // left)
      left = 1
    elif left % size == 0:
      shape.append(1)
      left //= size
    else:
      break
  if left != 1 or len(shape) != len(mesh.shape):
    raise ValueError(
      f"the mesh {dict(mesh.shape)} cannot be split into {processes} per-process "
      "blocks along its leading axes (data, then fsdp, then tensor); choose "
      "mesh.shape so that the process count divides data, or is data times a "
      "divisor of fsdp (and so on)"
    )
  return tuple(shape)


def replica_mesh(mesh: Mesh) -> Mesh:
  """`mesh`'s devices as [processes, *local shape], axes ("replica", *mesh axes)."""
  processes = jax.process_count()
  devices = mesh.devices.reshape(processes, *local_shape(mesh, processes))
  for p in range(processes):
    owners = {d.process_index for d in devices[p].flat}
    if len(owners) != 1:
      raise ValueError(
        f"the devices of mesh {dict(mesh.shape)} are not in process order "
        f"(block {p} spans processes {sorted(owners)}); build the mesh from "
        "jax.devices()"
      )
  return Mesh(devices, ("replica",) + tuple(mesh.axis_names))


def local_mesh(mesh: Mesh) -> Mesh:
  """This process's block of `mesh`, with its axis names."""
  rep = replica_mesh(mesh)
  return Mesh(rep.devices[jax.process_index()], tuple(mesh.axis_names))


class ReplicaPlacement:
  """Where the variables of an `nnx.State` go on the replicas: `local` shardings (this process's
  mesh) and the matching global `replicated` ones (the same specs on the replica mesh)."""

  def __init__(self, state, mesh: Mesh, rules):
    self.mesh = local_mesh(mesh)
    rep = replica_mesh(mesh)
    self.local = nnx.to_pure_dict(parallel.state_shardings(state, self.mesh, rules))
    self.replicated = jax.tree.map(lambda s: NamedSharding(rep, s.spec), self.local)

  def reshard(self, fn=None):
    """A jitted `fn` (default: a copy) whose output has the replica layout; pass its result to
    `localize`. The output tree must have the structure of the placement's state."""
    fn = fn or (lambda tree: jax.tree.map(jnp.copy, tree))
    return jax.jit(fn, out_shardings=self.replicated)

  def localize(self, tree):
    """Arrays of the replica layout -> this process's replica, on its local mesh (no copy)."""
    return jax.tree.map(
      lambda x, s: jax.make_array_from_single_device_arrays(x.shape, s, [shard.data for shard in x.addressable_shards]),
      tree,
      self.local,
    )


def share(n: int, process: int | None = None, processes: int | None = None) -> tuple[int, int]:
  """[start, stop) of this process's contiguous part of n items (sizes differ by at most one)."""
  process = jax.process_index() if process is None else process
  processes = jax.process_count() if processes is None else processes
  bounds = np.linspace(0, n, processes + 1).round().astype(int)
  return int(bounds[process]), int(bounds[process + 1])


_GATHERS = itertools.count()
GATHER_CHUNK = 32 << 20  # Bytes per key of the coordination service's store.
GATHER_TIMEOUT_S = 3600  # The slowest process's share of a round may take this long.


def allgather_objects(obj: Any) -> list:
  """Every process's picklable `obj`, in process order (the same list on every process).

  Host to host, through the key-value store of `jax.distributed`'s coordination service: nothing
  touches a device (a round's trajectories carry their images as PNG bytes; gathering them as
  arrays would put every process's images on every device). Each call is one numbered exchange
  (all processes make the same calls in the same order); its keys are deleted once every process
  has read them."""
  processes, me = jax.process_count(), jax.process_index()
  if processes == 1:
    return [obj]
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  client = distributed.global_state.client
  tag = f"cvj_gather/{next(_GATHERS)}"
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  chunks = [data[i : i + GATHER_CHUNK] for i in range(0, len(data), GATHER_CHUNK)] or [b""]
  for i, chunk in enumerate(chunks):
    client.key_value_set_bytes(f"{tag}/{me}/{i}", chunk)
  client.key_value_set(f"{tag}/{me}/chunks", str(len(chunks)))
  timeout_ms = GATHER_TIMEOUT_S * 1000
  out = []
  for p in range(processes):
    if p == me:
      out.append(obj)
      continue
    n = int(client.blocking_key_value_get(f"{tag}/{p}/chunks", timeout_ms))
    out.append(
      pickle.loads(b"".join(client.blocking_key_value_get_bytes(f"{tag}/{p}/{i}", timeout_ms) for i in range(n)))
    )
  client.wait_at_barrier(f"{tag}/read", timeout_ms)
  for i in range(len(chunks)):
    client.key_value_delete(f"{tag}/{me}/{i}")
  client.key_value_delete(f"{tag}/{me}/chunks")
  return out
