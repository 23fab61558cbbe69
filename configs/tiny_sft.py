"""python -m launch.sft --config=configs/tiny_sft.py --workdir=/tmp/tiny_sft

SFT of the tiny Qwen2.5-VL (random init, tiny tokenizer built into the workdir) on synthetic
orientation/crop trajectories, on CPU in a few minutes. The synthetic records drop their system
prompt and tool schemas here (`data.synthetic_short`): with the tiny byte-level tokenizer those
alone are ~1000 tokens, which makes a CPU step several times slower. Every field can be overridden, e.g.
`--config.train.steps=20 --config.mesh.shape.fsdp=1`. `get_config()` is also the base of the
real recipes.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.path = ""          # An HF checkpoint directory; empty: a random `preset`.
  c.model.preset = "qwen2_5_vl_tiny"
  c.model.vocab_size = 512   # For tiny presets (the tiny tokenizer has ~406 tokens).
  c.model.tokenizer = ""     # Empty: `model.path`, or a tiny tokenizer built in the workdir.
  c.model.param_dtype = "float32"
  c.model.attention_backend = "auto"  # cudnn on NVIDIA GPUs, splash on TPUs, xla on CPUs.
  c.model.chat_format = ""       # Empty: the model family's (qwen2_vl; Qwen3-VL: qwen3_vl, or
                                 # qwen3_vl_nothink for Instruct); docs/chat_format.md.
  c.model.scan_layers = False  # True: decoder layers stacked, run by a scan (one compiled layer).

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic", "files" (ShareGPT JSON/JSONL/Parquet) or "tfds".
  c.data.paths = ""            # Comma-separated data files for source="files".
  c.data.tfds_name = ""        # source="tfds": the set launch.prepare_tfds wrote (--name),
  c.data.tfds_dir = ""         # ... under this directory (--data_dir), local or mounted,
  c.data.tfds_split = "train"  # ... this split of it (--split).
  c.data.skip_bad = False
  c.data.drop_oversized = False  # Records longer than the largest bucket, or with more patches
                                 # or images than a batch holds: False refuses to start naming
                                 # them (file:index) and the setting that fits them; True drops
                                 # them, counted in the summary, TensorBoard, dropped_records.jsonl.
  c.data.size_cache = ""       # Record sizes: "" <workdir>/size_cache, "off", or a folder.
  c.data.synthetic_size = 256
  c.data.synthetic_seed = 0
  c.data.synthetic_short = True  # Drop system prompt and tool schemas (short CPU sequences).
  c.data.synthetic_kinds = ("word", "number", "arrow", "chart")  # Card contents to draw from.
  c.data.synthetic_transforms = ("none", "rotate_90", "rotate_180", "rotate_270", "flip_horizontal",
                                 "flip_vertical")
  c.data.synthetic_p_small = 0.5  # Share of cards placed small on a large canvas (a crop needed).
  c.data.seed = 0              # Shuffling: epoch e's order is a function of (seed, e).
  c.data.num_epochs = 1
  c.data.buckets = (256, 512, 768)  # Padded sequence lengths; the largest is the cutoff.
  c.data.sort_window = 8       # Sort each 8 steps' records by length (less padding); 0: off.
  c.data.groups = 0            # Row groups per microbatch (0: one per process); fixed,
                               # the batches are the same for any process count.
  c.data.packing = "none"      # Sequence packing: "first_fit" or "best_fit" put several records
                               # in a row (each its own attention segment); "none": one per row.
  c.data.batch_size = 4        # Rows of one microbatch, all hosts together.
  c.data.patch_budget = 512    # Image patches per host and microbatch (a multiple of 4).
  c.data.max_images = 8        # Images per host and microbatch.
  c.data.min_pixels = 28 * 28 * 4
  c.data.max_pixels = 28 * 28 * 16
  c.data.workers = 0           # Grain worker processes (0: build batches in the main process).
  c.data.prefetch_buffer = 2

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.05
  c.optim.warmup_steps = 0     # If set, wins over warmup_ratio.
  c.optim.final_lr_ratio = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.max_grad_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 60           # 0: `data.num_epochs` epochs.
  c.train.grad_accum = 1
  c.train.compute_dtype = "float32"  # or "bfloat16" (float32 master weights either way)
  c.train.remat = "none"       # "none", "full", "dots", "dots_all"
  c.train.loss_chunk = 0       # Sequence positions per cross-entropy chunk (0: all at once).
  c.train.freeze_vision_tower = True
  c.train.freeze_merger = True
  c.train.log_every = 5
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  c.train.sigterm_grace_s = 0.0  # SIGTERM (preemption): finish the step in flight, save, exit 75
                                # (requeue); abandon it after this many s (0: wait). README 'Preemption'.
  c.train.async_checkpoints = True
  c.train.resume_step = 0         # 0: the newest intact checkpoint; N: resume from step N.
  c.train.allow_config_change = False  # Resume even when the config differs from the checkpoint's.
  c.train.peak_tflops = 0.0    # Per-device peak for MFU when the device kind is not known.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.mesh.num_devices = 0       # 0: all devices.
  c.mesh.rules = ()            # Empty: parallel.DEFAULT_RULES.

  c.distributed = ml_collections.ConfigDict()
  c.distributed.num_processes = 1  # > 1: jax.distributed.initialize() with the fields below.
  c.distributed.coordinator_address = ""
  c.distributed.process_id = -1    # -1: from the cluster environment.
  return c
