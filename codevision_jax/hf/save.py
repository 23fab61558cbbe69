"""`save_hf`: an NNX model -> an HF checkpoint directory transformers loads with `from_pretrained`.

Keys follow the official release layout of the family; tensors stream one at a time from the devices into
sharded safetensors with an index. Writing goes to a temporary sibling directory that replaces
`out_dir` only when complete, so a half-written export never looks like a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np
from flax import nnx

from codevision_jax.hf import keymap, safetensors_io
from codevision_jax.hf.load import INDEX_FILE, SINGLE_FILE

# Files copied from `source_dir` when present: tokenizer, processor, chat template, generation.
AUXILIARY_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.json",
  "merges.txt",
  "special_tokens_map.json",
  "added_tokens.json",
  "preprocessor_config.json",
  "video_preprocessor_config.json",
  "processor_config.json",
  "chat_template.json",
  "chat_template.jinja",
  "generation_config.json",
)


def _host_value(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def save_hf(
  model, out_dir: str, dtype=None, max_shard_size="5GB", source_dir: str | None = None, chat_template: str | None = None
) -> str:
  """Writes `model` as an HF checkpoint directory; returns `out_dir`.

  Args:
    dtype: dtype of the written tensors (default: each parameter's own).
    max_shard_size: bytes per safetensors file ("5GB", "500MB" or an int).
    source_dir: a checkpoint directory whose tokenizer and processor files are copied over.
    chat_template: the Jinja chat template the export carries (`write_chat_template`).
  """
  state = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(state))

  def value_of(path, layer=None):
    x = flat[path].get_value()
    return _host_value(x if layer is None else x[layer])  # One layer of a stacked parameter.

  return write_hf(
    model.config,
    state,
    value_of,
    out_dir,
    dtype=dtype,
    max_shard_size=max_shard_size,
    files={
      name: os.path.join(source_dir, name)
      for name in AUXILIARY_FILES
      if source_dir and os.path.exists(os.path.join(source_dir, name))
    },
    chat_template=chat_template,
  )


def write_chat_template(directory: str, template: str) -> None:
  """Makes `template` the chat template of the tokenizer and processor in `directory`:
  `chat_template.jinja` (what transformers reads first), the `chat_template` key of
  `tokenizer_config.json` when that file has one, and no `chat_template.json` (an older copy)."""
  with open(os.path.join(directory, "chat_template.jinja"), "w", encoding="utf-8") as f:
    f.write(template)
  stale = os.path.join(directory, "chat_template.json")
  if os.path.exists(stale):
    os.remove(stale)
  config_path = os.path.join(directory, "tokenizer_config.json")
  if os.path.exists(config_path):
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
    if "chat_template" in config:
      config["chat_template"] = template
      with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def write_hf(
  config,
  state: nnx.State,
  value_of,
  out_dir: str,
  *,
  dtype=None,
  max_shard_size="5GB",
  files: dict | None = None,
  config_updates: dict | None = None,
  chat_template: str | None = None,
) -> str:
  """Writes an HF checkpoint directory from parameter values fetched one at a time.

  `state` gives the parameters' paths, shapes and dtypes (an abstract state is enough);
  `value_of(path)` returns one parameter's host value, called once per parameter, in write order,
  so at most one tensor is in memory beside the file being written; for a parameter of scanned
  decoder layers (stacked [L, ...]) it is called as `value_of(path, i)` once per layer i and
  returns that layer's value. `files` maps names in the
  output to files copied in (tokenizer, processor); `config_updates` are set at the top level and
  in `text_config` of config.json; `chat_template` (Jinja), when given, becomes the export's chat
  template (`write_chat_template`). Atomic: the directory appears only when complete.
  """
  flat = dict(nnx.to_flat_state(state))
  mappings = keymap.param_mappings(state, config)
  by_key = {}
  sizes = []
  for m in mappings:
    out_dtype = np.dtype(dtype if dtype is not None else flat[m.path].get_value().dtype)
    key = keymap.to_official_layout(m.hf_key, config.model_type)
    by_key[key] = (m, out_dtype)
    sizes.append((key, int(np.prod(m.hf_shape, dtype=np.int64)) * out_dtype.itemsize))
  shards = safetensors_io.plan_shards(sizes, safetensors_io.parse_size(max_shard_size))

  is_writer = jax.process_index() == 0
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent) if is_writer else None
  try:
    weight_map = {}
    names = (
      [SINGLE_FILE]
      if len(shards) == 1
      else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for name, keys in zip(names, shards):
      specs = [(k, by_key[k][0].hf_shape, by_key[k][1]) for k in keys]

      def produce(k):
        m, _ = by_key[k]
        return m.to_hf(value_of(m.path, m.layer))

      if is_writer:
        safetensors_io.write_file(os.path.join(tmp, name), specs, produce)
      else:  # Other hosts take part in the gathers only.
        for k in keys:
          produce(k)
      weight_map.update({k: name for k in keys})
    if not is_writer:
      return out_dir
    if len(shards) > 1:
      total = sum(n for _, n in sizes)
      with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = config.to_hf_dict()
    written_dtype = np.dtype(dtype) if dtype is not None else np.dtype(next(iter(flat.values())).get_value().dtype)
    hf_config["dtype"] = {"bfloat16": "bfloat16", "float32": "float32", "float16": "float16"}.get(
      written_dtype.name, "float32"
    )
    for key, value in (config_updates or {}).items():
      hf_config[key] = value
      hf_config.setdefault("text_config", {})[key] = value
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    for name, src in (files or {}).items():
      shutil.copy2(src, os.path.join(tmp, name))
    if chat_template is not None:
      write_chat_template(tmp, chat_template)
    _replace_dir(tmp, out_dir)
    tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def _replace_dir(src: str, dst: str) -> None:
  """Moves the finished `src` into place at `dst`, replacing an older `dst` last."""
  if os.path.exists(dst):
    old = dst + ".old-" + os.path.basename(src)
    os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(src, dst)
