"""`load_hf`: a local HF checkpoint directory -> an NNX model, streamed onto devices.

The model is first built abstractly (shapes only). Each tensor is then read from its safetensors
file, converted to our layout and dtype, and placed straight on its devices with its sharding
(`jax.make_array_from_callback`). Each process reads from the files only the part of each tensor
that its own devices hold (`held_box`: whole rows with one read, a column range with one read per
row), so on a multi-process mesh that shards the parameters across processes each reads its
share of the checkpoint. Host memory holds at most one tensor at a time besides the model.

With `scan_layers` the decoder's parameters are stacked [L, ...]: layer i's tensor is read (its
held part) and placed on the devices alone, then written into slice i of the stacked array on the
devices, so the host still holds one layer's tensor at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from codevision_jax import parallel
from codevision_jax.hf import keymap
from codevision_jax.hf.safetensors_io import SafetensorsFile
from codevision_jax.models import abstract_model, load_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _checkpoint_readers(path: str) -> dict[str, SafetensorsFile]:
  """HF key -> the reader of its file (one reader, one header parse, per file), from the index
  when there is one, else from the single file or every *.safetensors file."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.exists(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(
        f"{index_path}: not a valid safetensors index ({e!r}); expected {{'weight_map': {{key: file}}}}"
      ) from None
    by_name: dict[str, SafetensorsFile] = {}
    readers = {}
    for key, name in weight_map.items():
      if name not in by_name:
        file_path = os.path.join(path, name)
        if not os.path.exists(file_path):
          raise FileNotFoundError(f"{index_path}: key {key!r} points to {name}, which does not exist")
        by_name[name] = SafetensorsFile(file_path)
      if key not in by_name[name].entries:
        raise ValueError(f"{index_path}: key {key!r} is listed in {name}, which does not hold it")
      readers[key] = by_name[name]
    return readers
  single = os.path.join(path, SINGLE_FILE)
  candidates = (
    [single]
    if os.path.exists(single)
    else sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
  )
  if not candidates:
    raise FileNotFoundError(f"{path}: no {SINGLE_FILE}, no {INDEX_FILE} and no *.safetensors file")
  readers = {}
  for file_path in candidates:
    reader = SafetensorsFile(file_path)
    readers.update(dict.fromkeys(reader.keys(), reader))
  return readers


def held_box(shape: tuple[int, ...], sharding) -> list[tuple[int, int]]:
  """Per axis, the [start, stop) of a tensor that this process's devices hold together."""
  held = list(sharding.addressable_devices_indices_map(shape).values())
  box = []
  for axis, size in enumerate(shape):
    spans = [idx[axis].indices(size)[:2] if axis < len(idx) else (0, size) for idx in held]
    box.append((min(a for a, _ in spans), max(b for _, b in spans)))
  return box


def read_held(reader: SafetensorsFile, key: str, m: keymap.ParamMapping, box: list[tuple[int, int]]) -> np.ndarray:
  """The part `box` (our layout) of parameter `m`, read from HF tensor `key` and converted,
  reading only the rows and columns of the file's tensor that the box covers."""
  if m.kind == "same":
    if len(m.shape) == 0:
      return reader.read(key)
    if len(m.shape) <= 2:
      block = reader.read_box(key, box[0], box[1] if len(m.shape) == 2 else None)
      return block.reshape([hi - lo for lo, hi in box])
    block = reader.read_box(key, box[0]).reshape((box[0][1] - box[0][0],) + m.shape[1:])
    return block[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box[1:])]
  # A kernel [in, out]: the file holds [out, in...] (its 2-D view is our transpose).
  return np.ascontiguousarray(reader.read_box(key, box[1], box[0]).T)


def _shifted(idx: tuple, shape: tuple[int, ...], starts: list[int]) -> tuple:
  """A device's index into the whole tensor -> its index into the block read from `starts`."""
  out = []
  for axis, size in enumerate(shape):
    lo, hi = idx[axis].indices(size)[:2] if axis < len(idx) else (0, size)
    out.append(slice(lo - starts[axis], hi - starts[axis]))
  return tuple(out)


def _layer_sharding(sharding):
  """The sharding of one layer of a stacked parameter placed with `sharding` (its leading axis
  dropped)."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
  return sharding


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "sharding"))
def _zeros(shape, dtype, sharding):
  return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), sharding)


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked, layer, i):
  return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), i, 0)


def _place(reader, key, m: keymap.ParamMapping, sharding, dtype):
  """Tensor `key` of mapping `m` as an array on `sharding`, reading only the part this process
  holds."""
  shape = m.shape
  box = held_box(shape, sharding)
  block = read_held(reader, key, m, box).astype(dtype, copy=False)
  starts = [lo for lo, _ in box]
  return jax.make_array_from_callback(shape, sharding, lambda idx: block[_shifted(idx, shape, starts)])


def load_hf(
  path: str,
  dtype="bfloat16",
  mesh: Mesh | None = None,
  rules=parallel.DEFAULT_RULES,
  attention_backend: str = "xla",
  scan_layers: bool = False,
):
  """Loads a Qwen-VL checkpoint directory (config.json + safetensors) as an NNX model.

  Args:
    path: a local directory, as `save_pretrained` or the official release writes it.
    dtype: parameter dtype ("bfloat16", "float32", ...).
    mesh: place parameters on this mesh by their logical axes and `rules`; default: the first
      local device, unsharded.
    scan_layers: build the decoder with stacked layers run by a scan (`models.text.TextModel`).
  Raises errors naming the key and file for missing or unexpected tensors, shape mismatches and
  unsupported `model_type`.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: not a checkpoint directory")
  config = load_config(path)
  dtype = jnp.dtype(dtype)
  model = abstract_model(config, param_dtype=dtype, attention_backend=attention_backend, scan_layers=scan_layers)
  graphdef, state = nnx.split(model)
  mappings = keymap.param_mappings(state, config)

  available = {}
  readers = _checkpoint_readers(path)
  for key, reader in readers.items():
    available.setdefault(keymap.to_transformers_layout(key), (key, reader))
  wanted = {m.hf_key for m in mappings}
  ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
  unexpected = sorted(set(available) - wanted - ignorable)
  if unexpected:
    key, reader = available[unexpected[0]]
    raise ValueError(
      f"{reader.path}: unexpected tensor {key!r} ({len(unexpected)} unexpected in all) "
      f"for model_type {config.model_type!r}; is config.json the right one?"
    )
  missing = [m.hf_key for m in mappings if m.hf_key not in available]
  if missing:
    raise ValueError(
      f"{path}: checkpoint lacks tensor {keymap.to_official_layout(missing[0], config.model_type)!r} "
      f"({len(missing)} missing in all)"
    )

  flat = dict(nnx.to_flat_state(state))
  device = jax.local_devices()[0]
  for m in mappings:
    key, reader = available[m.hf_key]
    if reader.shape(key) != m.hf_shape:
      raise ValueError(f"{reader.path}: tensor {key!r} has shape {reader.shape(key)}, the config implies {m.hf_shape}")
    var = flat[m.path]
    if mesh is None:
      sharding = jax.sharding.SingleDeviceSharding(device)
    else:
      sharding = parallel.variable_sharding(var, mesh, rules)
    if m.layer is None:
      var.set_value(_place(reader, key, m, sharding, dtype))
      continue
    stacked = var.get_value()
    if not isinstance(stacked, jax.Array):  # Still abstract: this is the first layer read.
      stacked = _zeros(tuple(stacked.shape), dtype, sharding)
    layer = _place(reader, key, m, _layer_sharding(sharding), dtype)
    var.set_value(_set_layer(stacked, layer, m.layer))
    del layer
  read = sum(r.bytes_read for r in {id(r): r for r in readers.values()}.values())
  logging.info(
    "loaded %s (%s, %d tensors) from %s; this process read %.1f MB of tensor data",
    config.model_type,
    dtype.name,
    len(mappings),
    path,
    read / 1e6,
  )
  return nnx.merge(graphdef, state)
