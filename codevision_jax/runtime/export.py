"""A training run's Orbax checkpoint (SFT or RL) -> an HF checkpoint directory transformers loads.

    export_run("/runs/sft_7b", "/exports/sft_7b", dtype="bfloat16")

The model's architecture, tokenizer and image settings come from the config the run saved with
its checkpoints (`model.path`'s config.json, or the preset with the tokenizer's special ids); the
trained parameters (an SFT state's `params`, or an RL state's policy `params`) and the frozen ones
are read one tensor at a time straight from the checkpoint into the safetensors files (no
optimizer state, no whole copy of the model in memory), so a CPU-only host exports any size.
Tokenizer and processor files come from `source` (an HF checkpoint directory), else from the
run's tokenizer; a `preprocessor_config.json` the source lacks is written from the run's image
settings, so `AutoProcessor.from_pretrained` works. The chat template written is that of the
run's chat format (`model.chat_format`, else the model family's), so the export renders
conversations as the model was trained on them, images included. The output appears atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from typing import Callable

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from codevision_jax.hf import save as hf_save
from codevision_jax.hf import keymap
from codevision_jax.hf import peft as peft_lib
from codevision_jax.models import abstract_model, lora
from codevision_jax.runtime import layout, run_setup

log = logging.getLogger(__name__)

PROCESSOR_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps with a finished checkpoint in `<workdir>/checkpoints`, oldest first (a save in
  progress writes to a temporary name first)."""
  directory = os.path.abspath(layout.checkpoints(workdir))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir}: no checkpoints directory; pass the --workdir of a launch.sft or launch.rl run")
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def preprocessor_config(settings, model_type: str) -> dict:
  """A transformers image-processor config with these settings."""
  return {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": PROCESSOR_CLASSES[model_type],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "image_mean": list(settings.image_mean),
    "image_std": list(settings.image_std),
    "min_pixels": settings.min_pixels,
    "max_pixels": settings.max_pixels,
    "size": {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels},
    "patch_size": settings.patch_size,
    "merge_size": settings.merge_size,
    "temporal_patch_size": settings.temporal_patch_size,
  }


class _MissingMetadataWarning(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "Metadata file does not exist" not in record.getMessage()


@contextlib.contextmanager
def _no_missing_metadata_warning():
  """Orbax warns that an item of a CheckpointManager step has no `_CHECKPOINT_METADATA` of its
  own (the manager writes it per step): expected here, so kept out of the console."""
  handlers = logging.getLogger().handlers + logging.getLogger("absl").handlers
  quiet = _MissingMetadataWarning()
  for h in handlers:
    h.addFilter(quiet)
  try:
    yield
  finally:
    for h in handlers:
      h.removeFilter(quiet)


def _leaf_paths(tree, prefix=()) -> dict:
  """{path (with int indices): metadata} of a checkpoint's metadata tree."""
  out = {}
  for k, v in tree.items():
    key = int(k) if isinstance(k, str) and k.isdigit() else k
    if isinstance(v, dict):
      out.update(_leaf_paths(v, prefix + (key,)))
    else:
      out[prefix + (key,)] = v
  return out


_slice_fallback_logged = False


@functools.lru_cache(maxsize=64)
def _open_stacked(item_dir: str, path: str):
  """The tensorstore array of `path` in an Orbax item (OCDBT + zarr or zarr3), opened once per
  export for all its layers; None where that layout is not found."""
  import tensorstore as ts  # An Orbax dependency.

  kvstore = {"driver": "ocdbt", "base": f"file://{item_dir}", "path": path}
  for driver in ("zarr", "zarr3"):
    try:
      return ts.open({"driver": driver, "kvstore": kvstore}, open=True).result()
    except Exception:  # Not this driver (or not this layout): try the next.  # noqa: BLE001
      continue
  return None


def _stacked_layer(item_dir: str, full: tuple, layer: int, fallback) -> np.ndarray:
  """Layer `layer` of a stacked array in an Orbax item (OCDBT + zarr, as Orbax writes it), read
  by itself with tensorstore, so that an export reads each stacked parameter once in all (not
  once per layer); `fallback()` (the whole array restored, then sliced) where that layout is not
  found."""
  global _slice_fallback_logged
  array = _open_stacked(os.path.abspath(item_dir), ".".join(str(k) for k in full))
  if array is not None:
    return np.asarray(array[layer].read().result())
  if not _slice_fallback_logged:
    _slice_fallback_logged = True
    logging.warning(
      "%s: stacked arrays are not in the OCDBT/zarr layout read by tensorstore; restoring each whole (once per layer)",
      item_dir,
    )
  return np.asarray(fallback())


@dataclasses.dataclass
class RunCheckpoint:
  """What an export reads of a run's checkpoint: its saved config, tokenizer, model config, the
  model's abstract parameter state, and `value_of(path, layer=None)`: one parameter (or one
  layer of a stacked one) read from the checkpoint; `paths`: every parameter path it holds
  (the model's, and LoRA adapters and quantization scales where the run had them)."""

  cfg: ml_collections.ConfigDict
  step_dir: str
  tok_dir: str
  tokenizer: object
  mc: object
  state: nnx.State
  paths: frozenset
  value_of: Callable


def open_checkpoint(workdir: str, step: int | None = None, source: str | None = None) -> RunCheckpoint:
  """The run's checkpoint `step` (default: the newest), ready to read one tensor at a time."""
  _open_stacked.cache_clear()  # Handles of an earlier export's files are not reused.
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no finished checkpoint")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"{workdir}: no checkpoint of step {step}; the finished ones are {steps}")
  step_dir = os.path.abspath(layout.step_dir(workdir, step))
  with open(layout.saved_config(step_dir)) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  tok_dir = source or cfg.model.tokenizer or cfg.model.path or layout.tokenizer(workdir)
  from codevision_jax.processing import tokenizer as tok_lib  # Deferred: transformers import.

  tokenizer = tok_lib.load_tokenizer(tok_dir)
  mc = run_setup.model_config(cfg.model, tokenizer)
  state = nnx.state(
    abstract_model(
      mc, param_dtype=run_setup.DTYPES[cfg.model.param_dtype], scan_layers=cfg.model.get("scan_layers", False)
    ),
    nnx.Param,
  )

  checkpointer = ocp.PyTreeCheckpointer()
  where = {}
  for item, sub in ((layout.STATE, ("params",)), (layout.FROZEN, ())):
    with _no_missing_metadata_warning():
      tree = checkpointer.metadata(layout.item(step_dir, item)).item_metadata.tree
    for path in _leaf_paths(tree):
      if path[: len(sub)] == sub:
        where[path[len(sub) :]] = (item, path)
  missing = [p for p, _ in nnx.to_flat_state(state) if p not in where]
  if missing:
    raise ValueError(
      f"{step_dir} lacks parameters the model has, e.g. {missing[:3]}: it is not a "
      f"checkpoint of this model ({mc.model_type}, from the run's config)"
    )

  def value_of(path, layer=None) -> np.ndarray:
    """One parameter, or layer `layer` of a stacked one (scanned decoder layers)."""
    item, full = where[path]
    if layer is not None:
      return _stacked_layer(layout.item(step_dir, item), full, layer, lambda: value_of(path)[layer])
    target, args = 0, ocp.RestoreArgs(restore_type=np.ndarray)
    for k in reversed(full):
      target, args = {str(k): target}, {str(k): args}
    out = checkpointer.restore(
      layout.item(step_dir, item), args=ocp.args.PyTreeRestore(item=target, restore_args=args, partial_restore=True)
    )
    for k in full:
      out = out[str(k)]
    return np.asarray(out)

  return RunCheckpoint(cfg, step_dir, tok_dir, tokenizer, mc, state, frozenset(where), value_of)


def merged_values(value_of: Callable, paths, settings: lora.LoraSettings) -> Callable:
  """`value_of` of the merged model: a kernel with LoRA adapters is kernel + scale * A @ B in
  float32, a quantized (QLoRA) kernel is dequantized first; everything else is read as it is."""

  def merged(path, layer=None):
    module = path[:-1]
    has = lambda name: module + (name,) in paths  # noqa: E731
    if path[-1] != "kernel" or not (has("lora_a") or has(lora.SCALE_NAME)):
      return value_of(path, layer)
    get = lambda name: value_of(module + (name,), layer)  # noqa: E731
    kernel_scale = get(lora.SCALE_NAME) if has(lora.SCALE_NAME) else None
    if not has("lora_a"):
      return lora.dequantize(get("kernel"), kernel_scale)
    return lora.merged_kernel(get("kernel"), get("lora_a"), get("lora_b"), settings.scale, kernel_scale)

  return merged


def export_run(
  workdir: str,
  out_dir: str,
  *,
  step: int | None = None,
  dtype: str | None = None,
  source: str | None = None,
  max_shard_size: str = "5GB",
) -> str:
  """Writes the run's checkpoint `step` (default: the newest) as an HF directory; returns it. A
  LoRA run's adapters are merged into the weights (`merged_values`)."""
  ck = open_checkpoint(workdir, step, source)
  cfg, tok_dir, tokenizer, mc, state = ck.cfg, ck.tok_dir, ck.tokenizer, ck.mc, ck.state
  from codevision_jax.processing import chat_template  # Deferred: transformers import.
  from codevision_jax.processing import tokenizer as tok_lib

  chat_format, _ = tok_lib.resolve_chat_format(tokenizer, cfg.model.get("chat_format"), mc.model_type, tok_dir)
  value_of = ck.value_of
  lora_settings = lora.settings(cfg)
  if lora_settings.enabled:
    value_of = merged_values(value_of, ck.paths, lora_settings)

  files = {}
  for name in hf_save.AUXILIARY_FILES:
    path = os.path.join(tok_dir, name)
    if os.path.exists(path):
      files[name] = path
  written = []
  if "preprocessor_config.json" not in files:
    settings = run_setup.image_settings(cfg.model, cfg.data, mc.model_type)
    generated = os.path.join(os.path.abspath(workdir), f".preprocessor_config.{os.getpid()}.json")
    with open(generated, "w") as f:
      json.dump(preprocessor_config(settings, mc.model_type), f, indent=2)
    files["preprocessor_config.json"] = generated
    written.append(generated)
  # The tokenizer's own ids (None where it has none), unless the model's config.json gives them:
  # transformers' defaults are the real vocabulary's, outside a small preset's.
  ids = {
    k: getattr(tokenizer, k)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    if k not in mc.extra_text and k not in mc.extra_top
  }
  try:
    return hf_save.write_hf(
      mc,
      state,
      value_of,
      out_dir,
      dtype=dtype,
      max_shard_size=max_shard_size,
      files=files,
      config_updates=ids,
      chat_template=chat_template.template_for(chat_format),
    )
  finally:
    for path in written:
      os.remove(path)


def is_lora_run(workdir: str, step: int | None = None) -> bool:
  """Whether the run's checkpoint `step` (default: the newest) holds LoRA adapters."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no finished checkpoint")
  step_dir = layout.step_dir(workdir, steps[-1] if step is None else step)
  try:
    with open(layout.saved_config(step_dir)) as f:
      return lora.settings(ml_collections.ConfigDict(json.load(f))).enabled
  except FileNotFoundError:
    return False  # export_run names the missing step.


def export_adapter(
  workdir: str, out_dir: str, *, step: int | None = None, dtype: str | None = None, base_model: str | None = None
) -> str:
  """Writes a LoRA run's adapters (checkpoint `step`, default the newest) as a PEFT adapter
  directory (`hf.peft`) for `peft.PeftModel.from_pretrained(<the HF base>, out_dir)`; returns it.
  `base_model` (default: the run's model.path) is recorded as `base_model_name_or_path`. The base
  is the run's model.path: a QLoRA run's adapters were trained on its quantized copy."""
  ck = open_checkpoint(workdir, step)
  settings = lora.settings(ck.cfg)
  if not settings.enabled:
    raise ValueError(
      f"{workdir}: the run has no LoRA adapters (model.lora.rank is 0 in its saved "
      "config); `python -m launch.export` writes its weights as an HF directory"
    )
  adapters = {}
  for m in keymap.param_mappings(ck.state, ck.mc):
    module = m.path[:-1]
    if m.path[-1] != "kernel" or module + ("lora_a",) not in ck.paths:
      continue
    key = m.hf_key[: -len(".weight")]
    adapters[key] = (ck.value_of(module + ("lora_a",), m.layer), ck.value_of(module + ("lora_b",), m.layer))
  return peft_lib.write_adapter(
    out_dir,
    settings,
    adapters,
    dtype=np.dtype(dtype or "float32"),
    base_model=ck.cfg.model.path if base_model is None else base_model,
  )
