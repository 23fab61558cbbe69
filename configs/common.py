"""The config sections every training stage shares (launch.sft, launch.rl), each value once.

Not a config to run: configs/base_sft.py and configs/base_rl.py build their recipes from these
sections, the model recipes (configs/qwen*_vl_*.py) name their model on top, and the tiny configs
change what a CPU run needs. A section takes as arguments only the values its stages set apart.
"""

import ml_collections


def model():
  """`model`, all but `path` and `preset`: the recipe that names its model states those."""
  m = ml_collections.ConfigDict()
  m.vocab_size = 0  # 0: the checkpoint's (or the preset's).
  m.tokenizer = ""  # Empty: model.path's tokenizer (a tiny preset: one built in the workdir).
  m.param_dtype = "float32"  # Master weights.
  m.attention_backend = "auto"  # cudnn on NVIDIA GPUs, splash on TPUs, xla on CPUs.
  m.chat_format = ""  # Empty: the model family's (qwen2_vl; Qwen3-VL: qwen3_vl, or
  # qwen3_vl_nothink for Instruct); docs/chat_format.md.
  m.scan_layers = False  # True: decoder layers stacked, run by a scan (one compiled layer).
  m.lora = lora()
  return m


def lora():
  """`model.lora`: LoRA adapters, the only parameters that train when rank > 0 (docs/lora.md)."""
  r = ml_collections.ConfigDict()
  r.rank = 0  # 0: off (the whole model trains as `train.freeze_*` say); e.g. 64.
  r.alpha = 16.0  # The adapters' output is scaled by alpha / rank.
  r.dropout = 0.0  # Only 0 (the step is deterministic).
  r.targets = ("q", "k", "v", "o", "gate", "up", "down")  # Decoder projections; add "merger",
  # "tower" for the vision merger / tower's linear layers.
  r.base_dtype = ""  # The frozen base: "" train.compute_dtype, "bfloat16", "float32",
  return r  # or QLoRA "int8" (decoder projections quantized).


def data():
  """`data`, the fields of both stages: where records come from and the smallest image size."""
  d = ml_collections.ConfigDict()
  d.source = "files"  # "files" (data.paths), "tfds" (below) or "synthetic" (a smoke test).
  d.paths = ""  # Required for source="files": comma-separated record files.
  d.tfds_name = ""  # source="tfds": the set launch.prepare_tfds wrote (--name),
  d.tfds_dir = ""  # ... under this directory (--data_dir), local or mounted,
  d.tfds_split = "train"  # ... this split of it (--split).
  d.skip_bad = False  # True: skip and count unreadable records instead of stopping.
  d.synthetic_seed = 0  # source="synthetic": codevision_jax.data.synthetic's tasks, from
  d.synthetic_short = False  # ... this seed; True drops their system prompt and tool schemas,
  d.synthetic_kinds = ("word", "number", "arrow", "chart")  # ... card contents drawn from these,
  d.synthetic_transforms = (
    "none",
    "rotate_90",
    "rotate_180",
    "rotate_270",
    "flip_horizontal",
    "flip_vertical",
  )  # ... each card turned by one of these,
  d.synthetic_p_small = 0.5  # ... and this share placed small on a large canvas (a crop needed).
  d.seed = 0  # Shuffling: epoch e's order is a function of (seed, e).
  d.min_pixels = 0  # 0: the checkpoint's preprocessor setting.
  return d


def optim(*, lr, schedule, warmup_ratio, weight_decay):
  """`optim`: AdamW (codevision_jax.runtime.optimizer); a stage sets its rate, schedule and decay."""
  o = ml_collections.ConfigDict()
  o.lr = lr  # Peak learning rate.
  o.schedule = schedule  # "cosine" (to lr * final_lr_ratio) or "constant", after the warmup.
  o.warmup_ratio = warmup_ratio  # Linear warmup over this share of the run's optimizer steps,
  o.warmup_steps = 0  # ... or over this many steps when set (wins over warmup_ratio).
  o.final_lr_ratio = 0.0  # Where the cosine ends, relative to lr.
  o.b1 = 0.9  # Adam's first-moment decay,
  o.b2 = 0.999  # ... second-moment decay,
  o.eps = 1e-8  # ... and epsilon.
  o.weight_decay = weight_decay  # Decoupled (AdamW).
  o.max_grad_norm = 1.0  # Global-norm clipping of each update.
  return o


def train():
  """`train`, the fields of both stages: precision, memory, freezing, checkpoints and resumption."""
  t = ml_collections.ConfigDict()
  t.compute_dtype = "bfloat16"  # float32 master weights either way.
  t.remat = "full"  # Rematerialisation per layer: "none", "full", "dots", "dots_all".
  t.loss_chunk = 2048  # Sequence positions per cross-entropy chunk (0: all at once).
  t.freeze_vision_tower = True  # The vision tower does not train,
  t.freeze_merger = True  # ... nor does its merger into the language model.
  t.keep_checkpoints = 3  # The newest N checkpoints are kept.
  t.sigterm_grace_s = 20.0  # SIGTERM (preemption): finish the step or round in flight, save,
  # exit 75 (requeue); abandon it after this many s (0: wait).
  # README 'Preemption'.
  t.async_checkpoints = True  # Write checkpoints while training goes on.
  t.resume_step = 0  # 0: the newest intact checkpoint; N: resume from step N.
  t.allow_config_change = False  # Resume even when the config differs from the checkpoint's.
  t.peak_tflops = 0.0  # Per-device peak for MFU when the device kind is not known.
  return t


def mesh():
  """`mesh`: the device mesh (codevision_jax.parallel)."""
  m = ml_collections.ConfigDict()
  m.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1: the devices left.
  m.num_devices = 0  # 0: all devices (of each process).
  m.rules = ()  # Logical-axis sharding rules; empty: parallel.DEFAULT_RULES.
  return m


def distributed():
  """`distributed`: several processes (hosts) in one run."""
  d = ml_collections.ConfigDict()
  d.num_processes = 1  # > 1: jax.distributed.initialize() with the fields below.
  d.coordinator_address = ""  # host:port of process 0 (empty: from the cluster environment).
  d.process_id = -1  # -1: from the cluster environment.
  return d


def tiny_model(c, preset, max_pixels):
  """Swaps a tiny model into config `c` (a smoke test, a CPU run): `preset`'s random weights and
  a tiny tokenizer built in the workdir, on short synthetic tasks with images up to `max_pixels`."""
  c.model.preset = preset
  c.model.vocab_size = 512  # The tiny tokenizer has ~406 tokens.
  c.data.source = "synthetic"
  c.data.synthetic_short = True  # No system prompt or tool schemas: with the tiny tokenizer those
  # alone are ~1,000 tokens.
  c.data.max_pixels = max_pixels
  return c


def variant(c, name, smoke):
  """Model recipe `c` as `--config=configs/<recipe>.py:<name>` asks for it: no name, the recipe;
  "smoke", `smoke(c)`, its smoke test (the tiny model swapped in, a step or round on CPU)."""
  if name == "smoke":
    return smoke(c)
  if name:
    raise ValueError(
      f"config variant {name!r} is not one of this recipe's: write "
      "--config=configs/<recipe>.py for the recipe or <recipe>.py:smoke for its smoke test"
    )
  return c
