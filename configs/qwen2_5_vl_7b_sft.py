"""python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --workdir=DIR --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.paths=/data/codevision_sft.json

CodeVision's SFT recipe for Qwen2.5-VL-7B, every value stated here: lr 1e-5, cosine decay, warmup
ratio 0.05, 2 epochs, sequences cut off at 32768 tokens (longer ones are dropped, see
data.pipeline), images at most 262144 pixels, vision tower and merger frozen. bfloat16 compute over
float32 master weights, per-layer rematerialisation, chunked cross-entropy (the 152k-entry
vocabulary). The model and its tokenizer are read from `model.path` (an HF checkpoint directory);
data from `data.paths` (ShareGPT JSON/JSONL or Parquet, comma-separated).

Batch: `data.batch_size` rows per microbatch (all hosts; a multiple of data x fsdp) times
`train.grad_accum` microbatches = 8 x 4 = 32 sequences per optimizer step. The vision tower
attends densely over a microbatch's patches, so `data.patch_budget` (patches per host and
microbatch) is what bounds its memory. Multi-host: add `--config.distributed.num_processes=N`.

Before renting accelerators, check that the recipe fits them (nothing is allocated; the table
lists each part's bytes per device, see README "Will it fit?"):
    python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --config.model.preset=qwen2_5_vl_7b \
        --dry_run --dry_run_devices=8

Smoke test: the recipe's own code path with the tiny model swapped in, on CPU in about a minute
(tests/test_recipes.py runs it on 8 CPU devices). On a 2-core, 24 GB machine it needs short
synthetic records (no system prompt), small images and one 1024-token bucket: XLA's attention on
CPU holds score matrices of rows x heads x T^2 (8 rows of 4096 tokens ask for 27 GB; add
--dry_run to see XLA's figure before running):
    python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --workdir=/tmp/smoke_qwen2_5_vl_7b_sft \
        --config.model.preset=qwen2_5_vl_tiny --config.model.vocab_size=512 \
        --config.data.source=synthetic --config.data.synthetic_short=True \
        --config.data.synthetic_size=64 --config.data.max_pixels=50176 \
        --config.data.buckets=1024, --config.data.workers=0 --config.train.steps=1
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.path = ""              # Required: --config.model.path=<HF checkpoint directory>.
  c.model.preset = ""            # A named random model instead of a checkpoint: qwen2_5_vl_7b (the
                                 # published shapes; dry runs), qwen2_5_vl_tiny (smoke tests).
  c.model.vocab_size = 0         # 0: the preset's.
  c.model.tokenizer = ""         # Empty: model.path's tokenizer.
  c.model.param_dtype = "float32"  # Master weights.
  c.model.attention_backend = "auto"  # cudnn on NVIDIA GPUs, splash on TPUs, xla on CPUs.
  c.model.chat_format = ""       # Empty: the model family's (qwen2_vl; Qwen3-VL: qwen3_vl, or
                                 # qwen3_vl_nothink for Instruct); docs/chat_format.md.
  c.model.scan_layers = False  # True: decoder layers stacked, run by a scan (one compiled layer).

  c.data = ml_collections.ConfigDict()
  c.data.source = "files"
  c.data.paths = ""              # Required: --config.data.paths=a.jsonl,b.parquet
  c.data.tfds_name = ""          # source="tfds": the set launch.prepare_tfds wrote (--name),
  c.data.tfds_dir = ""           # ... under this directory (--data_dir), local or mounted,
  c.data.tfds_split = "train"    # ... this split of it (--split).
  c.data.skip_bad = False        # True: skip and count unreadable records instead of stopping.
  c.data.drop_oversized = False  # Records longer than the largest bucket, or with more patches
                                 # or images than a batch holds: False refuses to start naming
                                 # them (file:index) and the setting that fits them; True drops
                                 # them, counted in the summary, TensorBoard, dropped_records.jsonl.
  c.data.size_cache = ""         # Record sizes: "" <workdir>/size_cache, "off", or a folder.
  c.data.synthetic_size = 5000   # For --config.data.source=synthetic (a smoke test of the recipe).
  c.data.synthetic_seed = 0
  c.data.synthetic_short = False
  c.data.synthetic_kinds = ("word", "number", "arrow", "chart")  # Card contents to draw from.
  c.data.synthetic_transforms = ("none", "rotate_90", "rotate_180", "rotate_270", "flip_horizontal",
                                 "flip_vertical")
  c.data.synthetic_p_small = 0.5  # Share of cards placed small on a large canvas (a crop needed).
  c.data.seed = 0                # Shuffling: epoch e's order is a function of (seed, e).
  c.data.num_epochs = 2
  c.data.buckets = (2048, 4096, 8192, 16384, 32768)  # Padded lengths; 32768: the cutoff.
  c.data.sort_window = 8         # Sort each 8 steps' records by length (less padding); 0: off.
  c.data.groups = 0              # Row groups per microbatch (0: one per process); fixed,
                                 # the batches are the same for any process count.
  c.data.packing = "none"        # Sequence packing: "first_fit" or "best_fit" put several records
                                 # in a row (each its own attention segment); "none": one per row.
  c.data.batch_size = 8          # Rows of one microbatch, all hosts together.
  c.data.patch_budget = 8192     # Image patches per host and microbatch (a multiple of 4).
  c.data.max_images = 32         # Images per host and microbatch.
  c.data.min_pixels = 0          # 0: the checkpoint's preprocessor setting.
  c.data.max_pixels = 262144
  c.data.workers = 4             # Grain worker processes building batches.
  c.data.prefetch_buffer = 2

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.05
  c.optim.warmup_steps = 0       # If set, wins over warmup_ratio.
  c.optim.final_lr_ratio = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.max_grad_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 0              # 0: data.num_epochs epochs.
  c.train.grad_accum = 4
  c.train.compute_dtype = "bfloat16"  # float32 master weights either way.
  c.train.remat = "full"         # "none", "full", "dots", "dots_all"
  c.train.loss_chunk = 2048      # Sequence positions per cross-entropy chunk.
  c.train.freeze_vision_tower = True
  c.train.freeze_merger = True
  c.train.log_every = 10
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.sigterm_grace_s = 20.0  # SIGTERM (preemption): finish the step in flight, save, exit 75
                                # (requeue); abandon it after this many s (0: wait). README 'Preemption'.
  c.train.async_checkpoints = True
  c.train.resume_step = 0         # 0: the newest intact checkpoint; N: resume from step N.
  c.train.allow_config_change = False  # Resume even when the config differs from the checkpoint's.
  c.train.peak_tflops = 0.0      # Per-device peak for MFU when the device kind is not known.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.mesh.num_devices = 0         # 0: all devices.
  c.mesh.rules = ()              # Empty: parallel.DEFAULT_RULES.

  c.distributed = ml_collections.ConfigDict()
  c.distributed.num_processes = 1  # > 1: jax.distributed.initialize() with the fields below.
  c.distributed.coordinator_address = ""
  c.distributed.process_id = -1    # -1: from the cluster environment.
  return c
