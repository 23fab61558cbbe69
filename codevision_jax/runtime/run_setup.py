"""The run setup every entry point shares: config sections in, the objects of a run out.

    mesh, rules = run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh)
    tokenizer, model, settings = run_setup.model_parts(cfg, workdir, mesh, rules)
    records = run_setup.conversation_source(cfg.data, kind="sft")

SFT (`train.loop`), rollouts (`launch.rollout`), the demo and RL read the same config sections
(`model`, `data`, `mesh`; see `configs/tiny_sft.py`), so a model, tokenizer, mesh and data set
are described once, the same way, in every recipe.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp

from codevision_jax import distributed_env, parallel
from codevision_jax.processing import image as image_lib
from codevision_jax.runtime import layout

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The model config's names of the special tokens a tokenizer must agree on.
SPECIAL_TOKENS = (
  ("image_token_id", "<|image_pad|>"),
  ("video_token_id", "<|video_pad|>"),
  ("vision_start_token_id", "<|vision_start|>"),
  ("vision_end_token_id", "<|vision_end|>"),
)


class _DropLibraryInfo(logging.Filter):
  """Drops INFO (and lower) records logged from inside the files of the given libraries."""

  def __init__(self, fragments: tuple[str, ...]):
    super().__init__()
    self.fragments = fragments

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not any(f in record.pathname for f in self.fragments)


def quiet_orbax(verbose: bool = False) -> None:
  """Keeps Orbax's INFO lines (hundreds per short run) and JAX's backend probing ("Unable to
  initialize backend 'tpu'") out of the console; their warnings and errors still show. `verbose`
  (the launchers' --orbax_logs) leaves them in."""
  if verbose:
    return
  noise = _DropLibraryInfo((f"{os.sep}orbax{os.sep}", f"jax{os.sep}_src{os.sep}xla_bridge.py"))
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
      handler.addFilter(noise)


def devices() -> list:
  """`jax.devices()`, with a message that says what to do when JAX cannot start the backend it
  was asked for (JAX_PLATFORMS=cuda on a host without an NVIDIA GPU raises a bare AssertionError)."""
  try:
    return jax.devices()
  except (RuntimeError, AssertionError, ValueError) as e:
    asked = os.environ.get("JAX_PLATFORMS")
    raise RuntimeError(
      f"JAX could not start its backend ({type(e).__name__}: {str(e).strip() or 'no detail'})"
      + (
        f"; JAX_PLATFORMS={asked!r} asks for a platform this host lacks: unset it to use the devices that are present"
        if asked
        else ""
      )
      + ". For GPUs install the CUDA wheels (pip install -e '.[cuda12]'), for TPUs "
      "pip install -e '.[tpu]'"
    ) from None


def make_mesh(mesh_cfg, prefix: str = "mesh"):
  """The device mesh of `mesh.shape` over the first `mesh.num_devices` devices of each process
  (0: all devices).

  With several processes the mesh must split along its leading axes into one block per process
  (`rl.replicas.local_shape`): each process feeds its own rows of every batch and the RL sampler
  runs on each process's block. Otherwise this raises before any work, naming the fields to
  change (`prefix`: where the mesh section is, e.g. "sft.mesh" for launch.rl's SFT stage)."""
  present = devices()
  processes = jax.process_count()
  if mesh_cfg.num_devices:
    per_process = [[d for d in present if d.process_index == p] for p in range(processes)]
    fewest = min(len(ds) for ds in per_process)
    if mesh_cfg.num_devices > fewest:
      raise ValueError(
        f"{prefix}.num_devices={mesh_cfg.num_devices} asks for more devices than a "
        f"process has ({fewest}); set it to at most {fewest}, or 0 for all"
      )
    present = [d for ds in per_process for d in ds[: mesh_cfg.num_devices]]
  try:
    mesh = parallel.make_mesh(mesh_cfg.shape.to_dict(), devices=present)
  except ValueError as e:
    raise ValueError(
      f"{prefix}.shape {mesh_cfg.shape.to_dict()} on {len(present)} device(s) "
      f"({prefix}.num_devices={mesh_cfg.num_devices}): {e}"
    ) from None
  if processes > 1:
    check_process_blocks(mesh, mesh_cfg, prefix)
  return mesh


def check_process_blocks(mesh, mesh_cfg, prefix: str = "mesh") -> None:
  """Raises when `mesh` does not split into one block of devices per process, in process order."""
  from codevision_jax.rl import replicas

  processes = jax.process_count()
  shape = dict(mesh.shape)
  if mesh.size == processes and mesh.devices.flat[0].platform == "cpu":
    raise ValueError(
      f"{prefix}.num_devices={mesh_cfg.num_devices} puts one CPU device of each of the "
      f"{processes} processes on the mesh: there JAX 0.10 builds the replicated parameters "
      "(norms, biases) as arrays that cannot be read back or checkpointed (jax.device_put of a "
      "device array onto a replicated sharding fails). Use at least 2 devices per process: "
      f"--config.{prefix}.num_devices=2 (the devices taken from each process), or 0 for all"
    )
  try:
    replicas.replica_mesh(mesh)
  except ValueError as e:
    n = mesh.size // processes if mesh.size % processes == 0 else 0
    hint = (
      f"e.g. --config.{prefix}.shape.data={processes} --config.{prefix}.shape.fsdp=-1 --config.{prefix}.shape.tensor=1"
      if n
      else f"--config.{prefix}.num_devices=0 (all devices)"
    )
    raise ValueError(
      f"{prefix}.shape {shape} ({prefix}.num_devices={mesh_cfg.num_devices}: "
      f"{mesh.size} device(s) of {len(devices())}) cannot run on {processes} "
      f"processes: {e}. Change {prefix}.shape (and {prefix}.num_devices, the devices "
      f"taken from each process), {hint}"
    ) from None


def attention_backend(model_cfg) -> str:
  """`model.attention_backend` resolved on the present devices (`models.resolve_attention_backend`:
  "auto" is cudnn on NVIDIA GPUs, splash on TPUs, xla on CPUs); `devices` first, so that a backend
  JAX cannot start is reported with what to do."""
  from codevision_jax import models

  devices()
  return models.resolve_attention_backend(model_cfg.attention_backend)


def check_platform(model_cfg) -> None:
  """Settings that cannot work on the present devices fail here, before anything is built."""
  from codevision_jax.models import attention

  platform, kind = devices()[0].platform, devices()[0].device_kind
  backend = attention_backend(model_cfg)
  if backend == "cudnn" and platform != "gpu":
    raise ValueError(
      f"model.attention_backend is 'cudnn', which needs NVIDIA GPUs, but the devices "
      f"are {platform} ({kind}): pass "
      "--config.model.attention_backend=auto (or xla), or run on GPUs with the CUDA "
      "wheels (pip install -e '.[cuda12]')"
    )
  if backend == "splash" and platform != "tpu" and not attention.splash_interpret():
    raise ValueError(
      f"model.attention_backend is 'splash', the TPU Pallas kernel, but the devices "
      f"are {platform} ({kind}): pass --config.model.attention_backend=auto (or "
      f"xla), or set {attention.INTERPRET_ENV}=1 to run it in Pallas interpret "
      "mode (slow; for tests)"
    )


def describe(mesh, model_cfg) -> str:
  """The platform, devices, processes, mesh and attention backend of a run, for its first log line."""
  d = mesh.devices.flat[0]
  backend = attention_backend(model_cfg)
  if model_cfg.attention_backend == "auto":
    backend += f" (auto on {d.platform})"
  return (
    f"{d.platform} platform, {mesh.size} x {d.device_kind} on the mesh "
    f"({len(devices())} device(s) present, {jax.process_count()} process(es)); mesh "
    f"{dict(mesh.shape)}; attention backend {backend}"
  )


def mesh_rules(mesh_cfg):
  """Logical-axis rules: `mesh.rules`, or `parallel.DEFAULT_RULES` when empty."""
  return parallel.rules_from_config(mesh_cfg.rules) if mesh_cfg.get("rules") else parallel.DEFAULT_RULES


def load_tokenizer(model_cfg, workdir: str):
  """`model.tokenizer` or `model.path`'s tokenizer; with neither (a random preset), the tiny
  tokenizer, built deterministically into `<workdir>/tokenizer`. Its chat format is
  `model.chat_format`, else the model family's (docs/chat_format.md)."""
  from codevision_jax.processing import tokenizer as tok_lib  # Deferred: transformers import.

  path = model_cfg.tokenizer or model_cfg.path
  if not path:
    path = layout.tokenizer(workdir)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(path, "tokenizer.json")):
      tok_lib.build_tiny_tokenizer(path)
    distributed_env.barrier("tokenizer")
  return tok_lib.load_tokenizer(
    path, chat_format=model_cfg.get("chat_format") or None, model_type=_model_type(model_cfg)
  )


def _model_type(model_cfg) -> str | None:
  """The model family a config's `model` section names (for its chat format), or None."""
  from codevision_jax.models import load_config, presets

  if model_cfg.path:
    return load_config(model_cfg.path).model_type
  return presets.preset(model_cfg.preset).model_type if model_cfg.preset else None


def special_token_ids(tokenizer) -> dict:
  """The tokenizer's ids of the image pad, video pad and vision markers, by model-config name."""
  return {name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_TOKENS}


def build_model(model_cfg, tokenizer, mesh=None, rules=None, *, seed: int = 0):
  """The model, placed on `mesh` by its logical axes: loaded from an HF checkpoint
  (`model.path`), or a random `model.preset` carrying the tokenizer's special-token ids."""
  from codevision_jax import models

  if model_cfg.path:
    from codevision_jax.hf.load import load_hf

    return load_hf(
      model_cfg.path,
      dtype=model_cfg.param_dtype,
      mesh=mesh,
      rules=rules,
      attention_backend=attention_backend(model_cfg),
      scan_layers=model_cfg.get("scan_layers", False),
    )
  model = models.build_model(
    model_config(model_cfg, tokenizer),
    seed=seed,
    param_dtype=DTYPES[model_cfg.param_dtype],
    attention_backend=attention_backend(model_cfg),
    scan_layers=model_cfg.get("scan_layers", False),
  )
  return model if mesh is None else parallel.shard_model(model, mesh, rules)


def model_config(model_cfg, tokenizer):
  """The architecture a config's `model` section names: `model.path`'s config.json, or the preset
  (with `model.vocab_size`) carrying the tokenizer's special-token ids."""
  from codevision_jax.models import load_config, presets

  if model_cfg.path:
    return load_config(model_cfg.path)
  if not model_cfg.preset:
    raise ValueError(
      "no model: pass --config.model.path=<HF checkpoint directory> (or a --config.model.preset for a random model)"
    )
  mc = presets.preset(model_cfg.preset)
  if model_cfg.vocab_size:
    mc = mc.replace(text=dataclasses.replace(mc.text, vocab_size=model_cfg.vocab_size))
  if len(tokenizer) > mc.text.vocab_size:
    raise ValueError(
      f"the tokenizer has {len(tokenizer)} tokens, more than the preset's vocabulary "
      f"{mc.text.vocab_size}; set model.vocab_size"
    )
  return mc.replace(**special_token_ids(tokenizer))


def model_parts(cfg, workdir: str, mesh=None, rules=None):
  """(tokenizer, model on the mesh, image settings) of a config's `model` and `data` sections and
  its `seed`: `load_tokenizer`, `build_model` and `image_settings` together, after
  `check_platform`; logs `describe` when there is a mesh."""
  check_platform(cfg.model)
  if mesh is not None:
    log.info("%s", describe(mesh, cfg.model))
  tokenizer = load_tokenizer(cfg.model, workdir)
  model = build_model(cfg.model, tokenizer, mesh, rules, seed=cfg.seed)
  from codevision_jax.models import lora  # LoRA adapters and the frozen base's dtype (model.lora).

  lora.apply(model, lora.settings(cfg), seed=cfg.seed, mesh=mesh, rules=rules)
  return tokenizer, model, image_settings(cfg.model, cfg.data, model.config.model_type)


@dataclasses.dataclass
class RunParts:
  """What every training run is built from (`run_parts`)."""

  mesh: jax.sharding.Mesh
  rules: tuple  # the logical-axis rules of the mesh
  tokenizer: object
  model: object  # on the mesh
  settings: image_lib.ImageSettings
  source: object  # the records (`conversation_source`)


def run_parts(cfg, workdir: str, *, kind: str, check=None) -> RunParts:
  """A training run's workdir, mesh and rules, then `check(cfg, mesh)` (settings that cannot work,
  refused before the model is built), then `model_parts` and the records of `kind` ("sft", "rl")."""
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = make_mesh(cfg.mesh), mesh_rules(cfg.mesh)
  if check is not None:
    check(cfg, mesh)
  tokenizer, model, settings = model_parts(cfg, workdir, mesh, rules)
  return RunParts(mesh, rules, tokenizer, model, settings, conversation_source(cfg.data, kind=kind))


def image_settings(model_cfg, data_cfg, model_type: str) -> image_lib.ImageSettings:
  """Preprocessing settings: the checkpoint's `preprocessor_config.json` when `model.path` has
  one, else the family's; `data.min_pixels` / `data.max_pixels` override when set (non-zero)."""
  path = model_cfg.path and os.path.join(model_cfg.path, "preprocessor_config.json")
  if path and os.path.exists(path):
    settings = image_lib.ImageSettings.from_preprocessor_config(path)
  else:
    settings = image_lib.ImageSettings.for_model_type(model_type)
  settings = dataclasses.replace(settings, **{k: data_cfg[k] for k in ("min_pixels", "max_pixels") if data_cfg[k]})
  if settings.min_pixels > settings.max_pixels:
    raise ValueError(
      f"images would be resized to at least {settings.min_pixels} and at most "
      f"{settings.max_pixels} pixels (data.min_pixels, data.max_pixels; 0 takes the "
      f"{model_type} preprocessor's): raise data.max_pixels to at least "
      f"{settings.min_pixels}, or lower data.min_pixels"
    )
  return settings


def conversation_source(data_cfg, *, kind: str):
  """The records of a run: `data.synthetic_size` synthetic tasks (optionally only some
  `data.synthetic_kinds` / `synthetic_transforms`, with `synthetic_p_small` of them small on a
  large canvas), the files of `data.paths` (comma-separated; `kind` "sft" needs an assistant
  turn per record, "rl" a prompt), or the TFDS set `data.tfds_name` (split `data.tfds_split`)
  that `launch.prepare_tfds` wrote under `data.tfds_dir` (read on access, from ArrayRecord)."""
  if data_cfg.source == "synthetic":
    from codevision_jax.data import synthetic

    variety = {k: data_cfg.get(f"synthetic_{k}") for k in ("kinds", "transforms", "p_small")}
    convs = synthetic.generate(
      data_cfg.synthetic_size,
      seed=data_cfg.synthetic_seed,
      **{k: (tuple(v) if k != "p_small" else v) for k, v in variety.items() if v is not None},
    )
    if data_cfg.get("synthetic_short"):  # No system prompt or tool schemas: short CPU sequences.
      for c in convs:
        c.messages = [m for m in c.messages if m["role"] != "system"]
        c.tools = None
    return convs
  if data_cfg.source == "files":
    from codevision_jax.data.sources import ConversationSource

    paths = [p for p in data_cfg.paths.split(",") if p]
    if not paths:
      raise ValueError("data.source is 'files' but data.paths is empty; pass --config.data.paths=a.jsonl,b.parquet")
    return ConversationSource.from_files(paths, kind=kind, skip_bad=data_cfg.skip_bad)
  if data_cfg.source == "tfds":
    from codevision_jax.data import tfds_source

    name, data_dir = data_cfg.get("tfds_name"), data_cfg.get("tfds_dir")
    split = data_cfg.get("tfds_split") or tfds_source.DEFAULT_SPLIT
    if not name or not data_dir:
      raise ValueError(
        "data.source is 'tfds' but data.tfds_name and data.tfds_dir are not both "
        "set; pass --config.data.tfds_name=NAME --config.data.tfds_dir=DIR (the "
        "--name and --data_dir of python -m launch.prepare_tfds)"
      )
    try:
      return tfds_source.TfdsSource(name, data_dir, split, kind=kind)
    except tfds_source.TfdsError as e:
      raise ValueError(f"data.tfds_name={name!r}, data.tfds_dir={data_dir!r}, data.tfds_split={split!r}: {e}") from None
  raise ValueError(f"data.source {data_cfg.source!r} is not one of 'synthetic', 'files', 'tfds'")
