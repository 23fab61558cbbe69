"""A run built abstractly, to prove it fits the accelerators before any is rented.

    plan = dry_run.plan(cfg, kind="rl", device_memory=141e9, platform="gpu")
    print(plan.table())
    plan.check()  # raises DoesNotFit naming the largest part of the phase that does not fit

`launch.sft --dry_run` and `launch.rl --dry_run` call it (with `--dry_run_devices=N` the mesh is N
CPU devices faked with `--xla_force_host_platform_device_count`, so a recipe for 8 GPUs is checked
on a laptop). Nothing is allocated: the model is `nnx.eval_shape`d, the optimizer state
`jax.eval_shape`d, and every array is placed by the run's own logical-axis rules on the run's own
mesh, so each part's bytes per device are exact: `sharding.shard_shape(shape)` of every array.
What cannot be read from shapes alone, the activations of a step, is an estimate from the step's
geometry (rows per device, the longest bucket, the remat policy, the attention backend of the
target platform, the loss chunk), stated as such in the table.

The phases and what each holds (the RL loop frees the rest: `rl.loop.drop_sampler_params`):
* SFT `step`: parameters (master dtype), optimizer state, frozen parameters, gradients (the scan's
  accumulator and one microbatch's), the parameters cast to the compute dtype, activations.
* RL `rollout`: the learner's parameters, optimizer state, reference and frozen parameters; the
  sampler's weights (its dtype, all of them); the sampler's KV cache (`rollout.slots` x
  `agent.max_total_tokens` + chunk, sharded) and its logits.
* RL `learn`: the learner's state and the sampler's frozen copy; gradients (accumulated outside
  jit: the running sum, one microbatch's, and their sum while it is formed); activations of one
  microbatch (`train.rows` x the longest `train.buckets`).
* RL `hand-off`: the learner's state, the sampler's frozen copy and the new trainable copy (the old
  one is freed first).

"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codevision_jax import parallel
from codevision_jax.models import attention
from codevision_jax.runtime import optimizer as optim_lib
from codevision_jax.train import step as step_lib
from codevision_jax.runtime import run_setup

GB = 1e9
H200_BYTES = 141 * GB  # The published HBM of one H200; `--device_memory_gb` for other targets.


class DoesNotFit(ValueError):
  """A phase of the run needs more memory per device than the device has."""


@dataclasses.dataclass(frozen=True)
class Part:
  name: str
  bytes: float  # per device
  note: str = ""
  estimate: bool = False
  shrink: str = ""  # the config keys that make it smaller


@dataclasses.dataclass
class MemoryPlan:
  """Bytes per device of each resident part, per phase of the run."""

  kind: str
  mesh_shape: dict
  platform: str
  attention_backend: str
  device_memory: float
  phases: dict  # phase -> list[Part]
  notes: list

  def total(self, phase: str) -> float:
    return sum(p.bytes for p in self.phases[phase])

  @property
  def peak_phase(self) -> str:
    return max(self.phases, key=self.total)

  @property
  def fits(self) -> bool:
    return all(self.total(p) <= self.device_memory for p in self.phases)

  def table(self) -> str:
    lines = [
      f"{self.kind} dry run: mesh {self.mesh_shape} ({math.prod(self.mesh_shape.values())} "
      f"devices), target {self.platform}, attention {self.attention_backend}; per device, "
      f"against {self.device_memory / GB:.1f} GB"
    ]
    for phase, parts in self.phases.items():
      lines.append(f"  {phase}:")
      for p in parts:
        lines.append(f"    {p.name:<28} {p.bytes / GB:9.2f} GB{' ~' if p.estimate else '  '} {p.note}")
      total = self.total(phase)
      lines.append(
        f"    {'total':<28} {total / GB:9.2f} GB   {100 * total / self.device_memory:.0f}% "
        f"of the device{'' if total <= self.device_memory else '  DOES NOT FIT'}"
      )
    lines += [f"  ({n})" for n in self.notes]
    lines.append("  ~ marks estimates (activations); the other parts are exact shard sizes")
    return "\n".join(lines)

  def check(self) -> None:
    """Raises `DoesNotFit` for the first phase over the device's memory, naming its largest part
    and the settings that shrink it."""
    for phase, parts in self.phases.items():
      total = self.total(phase)
      if total > self.device_memory:
        big = max(parts, key=lambda p: p.bytes)
        raise DoesNotFit(
          f"the {self.kind} run does not fit: its {phase} phase needs {total / GB:.1f} GB per "
          f"device of {self.device_memory / GB:.1f} GB; the largest part is {big.name} at "
          f"{big.bytes / GB:.1f} GB ({big.note}). "
          + (f"Lower {big.shrink}, " if big.shrink else "")
          + "or spread the run over more devices (mesh.shape)"
        )


# ---- exact parts -------------------------------------------------------------------------------------


def tree_bytes(tree, shardings) -> float:
  """Bytes per device of the arrays of `tree` (abstract or concrete) placed by `shardings` (the
  largest shard, which is what every device of an even sharding holds)."""
  leaves, shards = jax.tree.leaves(tree), jax.tree.leaves(shardings)
  if len(leaves) != len(shards):
    raise ValueError(f"{len(leaves)} arrays but {len(shards)} shardings")
  return float(
    sum(math.prod(s.shard_shape(tuple(x.shape))) * jnp.dtype(x.dtype).itemsize for x, s in zip(leaves, shards))
  )


def _cast(tree, dtype):
  """`tree`'s shapes after the run's own cast (`step.cast_floats`), without computing it."""
  return jax.eval_shape(lambda t: step_lib.cast_floats(t, dtype), tree)


def abstract_model_config(model_cfg):
  """The architecture of a config's `model` section without reading weights or a tokenizer:
  `model.path`'s config.json, or `model.preset` (with `model.vocab_size`)."""
  from codevision_jax.models import load_config, presets

  if model_cfg.path:
    return load_config(model_cfg.path)
  if not model_cfg.preset:
    raise ValueError(
      "the dry run needs the model's shapes: pass --config.model.path=<HF checkpoint "
      "directory> (only config.json is read) or --config.model.preset (e.g. "
      f"qwen2_5_vl_7b, qwen3_vl_8b; one of {sorted(presets.PRESETS)})"
    )
  mc = presets.preset(model_cfg.preset)
  if model_cfg.get("vocab_size"):
    mc = mc.replace(text=dataclasses.replace(mc.text, vocab_size=model_cfg.vocab_size))
  return mc


def abstract_state(cfg, mesh, rules):
  """(abstract trainable params, frozen params, their shardings, abstract optimizer state and its
  shardings) of the run, as `train.loop.build` / `rl.loop.build` make them."""
  from codevision_jax import models

  mc = abstract_model_config(cfg.model)
  dtype = run_setup.DTYPES[cfg.model.param_dtype]
  from codevision_jax.models import lora  # model.lora: adapters, the base in its dtype (QLoRA: int).

  model = nnx.eval_shape(
    lambda: lora.apply(
      models.build_model(mc, seed=0, param_dtype=dtype, scan_layers=cfg.model.get("scan_layers", False)),
      lora.settings(cfg),
    )
  )
  _, params, frozen, _ = nnx.split(model, optim_lib.trainable_of(cfg), nnx.Param, ...)
  frozen_sh = nnx.to_pure_dict(parallel.state_shardings(frozen, mesh, rules))
  return mc, model, params, frozen, frozen_sh


def _trainable_note(cfg) -> str:
  from codevision_jax.models import lora

  s = lora.settings(cfg)
  return f"trainable, {cfg.model.param_dtype}" + (f" (LoRA adapters, rank {s.rank})" if s.enabled else "")


def _frozen_note(cfg) -> str:
  from codevision_jax.models import lora

  s = lora.settings(cfg)
  return f"the LoRA base, {s.base_dtype}" if s.enabled else "vision tower / merger"


def _state_parts(params, frozen, frozen_sh, mesh, rules, tx) -> tuple[dict, dict]:
  pure = nnx.to_pure_dict(params)
  opt = jax.eval_shape(tx.init, pure)
  sh = step_lib.state_shardings(params, opt, mesh, rules)
  return (
    {
      "params": tree_bytes(pure, sh["params"]),
      "opt": tree_bytes(opt, sh["opt_state"]),
      "frozen": tree_bytes(nnx.to_pure_dict(frozen), frozen_sh),
    },
    {"params": pure, "params_sh": sh["params"]},
  )


# ---- activation estimates ----------------------------------------------------------------------------


def activation_bytes(
  mc,
  *,
  rows: int,
  length: int,
  remat: str,
  backend: str,
  compute_dtype,
  loss_chunk: int,
  patches: int,
  train_vision: bool,
) -> tuple[float, str]:
  """An estimate of the largest activation memory of one microbatch's forward and backward on one
  device: `rows` sequences of `length` tokens, `patches` image patches. Returns (bytes, how)."""
  tc, vc = mc.text, mc.vision
  b = jnp.dtype(compute_dtype).itemsize
  h, i, d = tc.hidden_size, tc.intermediate_size, tc.resolved_head_dim
  heads, kv = tc.num_attention_heads, tc.num_key_value_heads
  tokens = rows * length
  layer_all = 7 * h + 2 * heads * d + 2 * kv * d + 3 * i  # Every tensor of one layer's forward.
  saved_per_layer = {
    "full": h,
    "dots": heads * d + 2 * kv * d + 2 * h + 2 * i,
    "dots_all": heads * d + 2 * kv * d + 2 * h + 2 * i,
  }.get(remat, layer_all)
  saved = tc.num_hidden_layers * tokens * saved_per_layer * b
  working = 2 * tokens * layer_all * b  # One layer recomputed in the backward: values and grads.
  mask = rows * length * length  # The dense boolean [rows, 1, T, T] the decoder builds today.
  if backend == "xla":  # Scores, probabilities, masks in float32, and their gradients: about 12
    attn = 12 * rows * heads * length * length * 4  # score-sized arrays (XLA's figure on CPU).
  elif backend == "cudnn":  # The fused kernel, fed the dense mask as a bias in the compute dtype.
    attn = rows * length * length * b + 4 * rows * heads * length * 4
  else:  # Splash: block-wise, O(T) statistics.
    attn = 4 * rows * heads * length * 4
  chunk = min(loss_chunk or length, length)
  logits = 3 * rows * chunk * tc.vocab_size * 4  # float32 logits, softmax and their gradient.
  per_patch = 8 * vc.hidden_size + 2 * vc.intermediate_size
  vision = patches * per_patch * b * (2 * vc.depth if train_vision else 1)
  total = saved + working + mask + attn + logits + vision
  how = f"{rows} row(s) x {length} tokens, remat {remat}, {backend} attention, loss chunk {chunk}, {patches} patches"
  return float(total), how


# ---- XLA's own figures, when the present devices are the target -----------------------------------------


def padding_batch(cfg, mc) -> dict:
  """An SFT batch of the run's largest geometry, all padding: the shapes `train.loop` steps over
  (every microbatch of a run has them, whatever its records; `data.pack`)."""
  from codevision_jax.data import pack
  from codevision_jax.data.pipeline import BatchSpec

  settings = run_setup.image_settings(cfg.model, cfg.data, mc.model_type)
  spec = BatchSpec.from_config(cfg)
  mb = pack.pack(
    [],
    length=max(cfg.data.buckets),
    rows=spec.rows,
    patch_budget=spec.patch_budget,
    max_images=spec.max_images,
    model_config=mc,
    pad_id=0,
    max_image_patches=settings.max_frame_patches,
  )
  mb.pop("image_grid_thw")
  return jax.tree.map(lambda *xs: np.stack(xs), *[mb] * cfg.train.grad_accum)


def compiled_sft_step(cfg, mesh) -> dict:
  """XLA's memory analysis of the SFT step of `cfg` compiled for the present devices from
  abstract arguments (nothing allocated): argument, output and temporary bytes per device."""
  rules = run_setup.mesh_rules(cfg.mesh)
  mc, model, params, frozen, frozen_sh = abstract_state(cfg, mesh, rules)
  from codevision_jax.runtime import remat

  remat.apply_remat(model, cfg.train.remat)
  graphdef, params, frozen, rest = nnx.split(model, optim_lib.trainable_of(cfg), nnx.Param, ...)
  total = max(cfg.train.steps, 1)
  tx = optim_lib.make_optimizer(cfg.optim, total)
  pure = nnx.to_pure_dict(params)
  opt = jax.eval_shape(tx.init, pure)
  state_sh = step_lib.state_shardings(params, opt, mesh, rules)
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": pure, "opt_state": opt}
  batch = padding_batch(cfg, mc)
  batch_sh = step_lib.batch_shardings(mesh, rules, batch)
  abstract = lambda tree, sh: jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
  options = step_lib.StepOptions(
    compute_dtype=run_setup.DTYPES[cfg.train.compute_dtype], loss_chunk=cfg.train.loss_chunk
  )
  step = functools.partial(
    step_lib.train_step,
    graphdef=graphdef,
    rest=rest,
    tx=tx,
    lr_schedule=optim_lib.schedule(cfg.optim, total),
    options=options,
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jitted = jax.jit(
    step, in_shardings=(state_sh, frozen_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=(0,)
  )
  compiled = jitted.lower(
    abstract(state, state_sh), abstract(nnx.to_pure_dict(frozen), frozen_sh), abstract(batch, batch_sh)
  ).compile()
  m = compiled.memory_analysis()
  return {
    "arguments": float(m.argument_size_in_bytes),
    "outputs": float(m.output_size_in_bytes),
    "aliased": float(getattr(m, "alias_size_in_bytes", 0)),
    "temporaries": float(m.temp_size_in_bytes),
    "batch": tree_bytes(batch, batch_sh),
  }


# ---- the plans -----------------------------------------------------------------------------------------


def _platform_backend(cfg, platform: str) -> str:
  return attention.resolve_backend(cfg.model.attention_backend, platform)


def _batch_shards(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def plan_sft(cfg, mesh, *, platform: str, device_memory: float, compile: bool = False) -> MemoryPlan:
  """The SFT run of `cfg` (a `train.loop` config) on `mesh`; with `compile` (the present devices
  are the target) the step's temporaries are XLA's figure for the compiled step."""
  rules = run_setup.mesh_rules(cfg.mesh)
  mc, _, params, frozen, frozen_sh = abstract_state(cfg, mesh, rules)
  tx = optim_lib.make_optimizer(cfg.optim, max(cfg.train.steps, 1))
  exact, _ = _state_parts(params, frozen, frozen_sh, mesh, rules, tx)
  compute = run_setup.DTYPES[cfg.train.compute_dtype]
  backend = _platform_backend(cfg, platform)
  shards = _batch_shards(mesh)
  rows = max(cfg.data.batch_size // shards, 1)
  length = max(cfg.data.buckets)
  act, how = activation_bytes(
    mc,
    rows=rows,
    length=length,
    remat=cfg.train.remat,
    backend=backend,
    compute_dtype=compute,
    loss_chunk=cfg.train.loss_chunk,
    patches=cfg.data.patch_budget // max(shards // jax.process_count(), 1),
    train_vision=not cfg.train.freeze_vision_tower,
  )
  p = exact["params"]
  itemsize = jnp.dtype(run_setup.DTYPES[cfg.model.param_dtype]).itemsize
  parts = [
    Part("parameters", p, _trainable_note(cfg)),
    Part("optimizer state", exact["opt"], "AdamW moments"),
    Part("frozen parameters", exact["frozen"], _frozen_note(cfg)),
    Part("gradients", 2 * p * 4 / itemsize, "float32: the scan's sum and one microbatch's"),
    Part(
      "compute-dtype weights", p * jnp.dtype(compute).itemsize / itemsize, f"the step's {cfg.train.compute_dtype} copy"
    ),
    Part(
      "activations",
      act,
      how,
      estimate=True,
      shrink="data.batch_size (rows per device), data.buckets, data.patch_budget"
      + ("" if cfg.train.remat == "full" else ", or set train.remat='full'"),
    ),
  ]
  notes = []
  if compile:
    xla = compiled_sft_step(cfg, mesh)
    parts = parts[:3] + [
      Part(
        "batch",
        xla["batch"],
        f"{cfg.train.grad_accum} microbatch(es) of {cfg.data.batch_size} "
        f"x {length} tokens, {cfg.data.patch_budget} patches",
      ),
      Part(
        "step temporaries",
        xla["temporaries"],
        "XLA's figure for the compiled step: gradients, compute-dtype weights, activations",
        shrink=parts[-1].shrink,
      ),
    ]
    notes.append(f"compiled for the present {mesh.devices.flat[0].device_kind} devices")
  return MemoryPlan("sft", dict(mesh.shape), platform, backend, device_memory, {"step": parts}, notes)


def _sampler_shares_frozen(cfg, frozen, sampler_dtype) -> bool:
  """Whether the RL sampler reads the learner's frozen arrays instead of a copy (`lora.shared_or`,
  one process: every floating frozen parameter already in the sampler's dtype)."""
  floats = [x.dtype for x in jax.tree.leaves(nnx.to_pure_dict(frozen)) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jax.process_count() == 1 and all(d == jnp.dtype(sampler_dtype) for d in floats)


def plan_rl(cfg, mesh, *, platform: str, device_memory: float) -> MemoryPlan:
  """The GRPO run of `cfg` (an `rl.loop` config) on `mesh`."""
  from codevision_jax.models import lora
  from codevision_jax.models import paged_kv
  from codevision_jax.models.text import init_kv_cache
  from codevision_jax.sampling import engine as engine_lib

  rules = run_setup.mesh_rules(cfg.mesh)
  mc, model, params, frozen, frozen_sh = abstract_state(cfg, mesh, rules)
  steps = max(cfg.train.rounds, 1) * max(cfg.rollout.prompts // cfg.algo.mini_batch_prompts, 1)
  tx = optim_lib.make_optimizer(cfg.optim, steps)
  exact, aux = _state_parts(params, frozen, frozen_sh, mesh, rules, tx)
  ref_dtype = run_setup.DTYPES[cfg.algo.ref_dtype]
  reference = tree_bytes(_cast(aux["params"], ref_dtype), aux["params_sh"])
  sampler_dtype = run_setup.DTYPES[cfg.rollout.param_dtype or cfg.model.param_dtype]
  sampler_trainable = tree_bytes(_cast(aux["params"], sampler_dtype), aux["params_sh"])
  sampler_frozen = tree_bytes(_cast(nnx.to_pure_dict(frozen), sampler_dtype), frozen_sh)
  shared = _sampler_shares_frozen(cfg, frozen, sampler_dtype)
  if shared:  # LoRA: the sampler reads the learner's frozen base (rl.loop, lora.shared_or).
    sampler_frozen = 0.0
  if jax.process_count() > 1:  # Each process's replica holds all of it on its local devices.
    from codevision_jax.rl import replicas

    local = replicas.local_mesh(mesh)
    sampler_trainable = tree_bytes(
      _cast(aux["params"], sampler_dtype), nnx.to_pure_dict(parallel.state_shardings(params, local, rules))
    )
    sampler_frozen = tree_bytes(
      _cast(nnx.to_pure_dict(frozen), sampler_dtype), nnx.to_pure_dict(parallel.state_shardings(frozen, local, rules))
    )
  else:
    local = mesh
  # The KV cache exactly as the engine lays it out (DecodeEngine.allocate / cache_sharding).
  slots = cfg.rollout.slots
  length = cfg.agent.max_total_tokens + cfg.rollout.chunk + 1
  stacked = cfg.model.get("scan_layers", False)
  page = cfg.rollout.get("kv_page_size", 0)
  if page:  # A paged cache: its pool (DecodeEngine.allocate with a page size, ModelPolicy's clamp).
    most = slots * cfg.agent.max_total_tokens
    pages = -(-min(cfg.rollout.get("kv_pool_tokens", 0) or most, most) // page) + 1
    pages = -(-pages // local.size) * local.size
    cache = jax.eval_shape(
      functools.partial(
        paged_kv.init_pool,
        mc.text.num_hidden_layers,
        pages,
        page,
        mc.text.num_key_value_heads,
        mc.text.resolved_head_dim,
        sampler_dtype,
        stacked=stacked,
      )
    )
    kv_what, kv_shrink = f"{pages} pages x {page} tokens for {slots} slots", "rollout.kv_pool_tokens"
  else:
    cache = jax.eval_shape(functools.partial(init_kv_cache, mc.text, slots, length, sampler_dtype, stacked=stacked))
    kv_what, kv_shrink = f"{slots} slots x {length} entries", "rollout.slots or agent.max_total_tokens"
  spec = parallel.logical_to_spec(
    engine_lib.cache_logical_axes(stacked, paged=bool(page)), rules, jax.tree.leaves(cache)[0].shape, local
  )
  cache_sh = jax.tree.map(lambda _: jax.sharding.NamedSharding(local, spec), cache)
  kv = tree_bytes(cache, cache_sh)
  logits_b = slots * mc.text.vocab_size * 4

  compute = run_setup.DTYPES[cfg.train.compute_dtype]
  backend = _platform_backend(cfg, platform)
  shards = _batch_shards(mesh)
  from codevision_jax.rl import learner as learner_lib  # The learner's largest patch budget.

  learner_patches = learner_lib.learner_geometry(
    cfg, mc, run_setup.image_settings(cfg.model, cfg.data, mc.model_type), shards
  ).patch_budget
  act, how = activation_bytes(
    mc,
    rows=max(cfg.train.rows // shards, 1),
    length=max(cfg.train.buckets),
    remat=cfg.train.remat,
    backend=backend,
    compute_dtype=compute,
    loss_chunk=cfg.train.loss_chunk,
    patches=learner_patches // shards,
    train_vision=not cfg.train.freeze_vision_tower,
  )
  itemsize = jnp.dtype(run_setup.DTYPES[cfg.model.param_dtype]).itemsize
  p = exact["params"]
  adapters = lora.settings(cfg)
  learner = [
    Part("parameters", p, _trainable_note(cfg)),
    Part("optimizer state", exact["opt"], "AdamW moments"),
    Part(
      "reference",
      reference,
      f"{cfg.algo.ref_dtype} copy of the trainable parameters"
      + (" (the adapters with B zero: the base, adapters off)" if adapters.enabled else ""),
    ),
    Part("frozen parameters", exact["frozen"], _frozen_note(cfg)),
  ]
  sampler_f = Part(
    "sampler frozen copy",
    sampler_frozen,
    "none: the learner's frozen base, shared" if shared else f"{cfg.rollout.param_dtype or cfg.model.param_dtype}",
  )
  phases = {
    "rollout": learner
    + [
      Part(
        "sampler weights",
        sampler_trainable,
        f"{cfg.rollout.param_dtype or cfg.model.param_dtype} copy of the trainable parameters",
      ),
      sampler_f,
      Part("KV cache", kv, f"{kv_what}, {jnp.dtype(sampler_dtype).name}, sharded {spec}", shrink=kv_shrink),
      Part("sampler logits", logits_b, f"{slots} x {mc.text.vocab_size} float32, on one device"),
    ],
    "learn": learner
    + [
      sampler_f,
      Part("gradients", 3 * p * 4 / itemsize, "float32: the running sum, one microbatch's, their sum"),
      Part(
        "activations",
        act,
        how,
        estimate=True,
        shrink="train.rows (rows per device), train.buckets, train.patch_budget"
        + ("" if cfg.train.remat == "full" else ", or set train.remat='full'"),
      ),
    ],
    "hand-off": learner
    + [sampler_f, Part("sampler weights", sampler_trainable, "the new copy (the old one is freed first)")],
  }
  notes = []
  if jax.process_count() > 1:
    notes.append(f"the sampler runs on each process's replica, mesh {dict(local.shape)}")
  return MemoryPlan("rl", dict(mesh.shape), platform, backend, device_memory, phases, notes)


def plan(cfg, *, kind: str, platform: str | None = None, device_memory: float = 0.0, mesh=None) -> MemoryPlan:
  """The memory plan of a run of `kind` ("sft" or "rl") on `mesh` (default: `cfg.mesh` over the
  present devices), for a target `platform` (default: the present devices') with
  `device_memory` bytes per device (0: what the devices report; on CPU the host's memory over the
  devices; else an H200's 141 GB). When the target is the present platform, the SFT step is
  compiled and XLA's figures replace the activation estimate."""
  mesh = mesh if mesh is not None else run_setup.make_mesh(cfg.mesh)
  present = mesh.devices.flat[0]
  platform = platform or present.platform
  if not device_memory and platform == "cpu" == present.platform:  # CPU devices share the host's.
    import psutil

    device_memory = psutil.virtual_memory().total / mesh.size
  if not device_memory:
    stats = present.memory_stats() if present.platform != "cpu" else None
    device_memory = float((stats or {}).get("bytes_limit", 0)) or H200_BYTES
  if kind == "sft":
    return plan_sft(cfg, mesh, platform=platform, device_memory=device_memory, compile=platform == present.platform)
  if kind == "rl":
    return plan_rl(cfg, mesh, platform=platform, device_memory=device_memory)
  raise ValueError(f"kind {kind!r} is not one of 'sft', 'rl'")


def run_dry(
  kinds: Sequence[tuple[str, object]], *, platform: str | None, device_memory: float, stream=None
) -> list[MemoryPlan]:
  """The plans of `kinds` ((kind, config) pairs) printed as tables; raises `DoesNotFit` after
  printing them all when one does not fit."""
  import sys

  stream = stream or sys.stdout
  plans = []
  for kind, section in kinds:
    p = plan(section, kind=kind, platform=platform, device_memory=device_memory)
    print(p.table(), file=stream, flush=True)
    plans.append(p)
  for p in plans:
    p.check()
  return plans
