"""CodeVision's SFT recipe: the values configs/qwen2_5_vl_7b_sft.py and configs/qwen3_vl_8b_sft.py
share, each stated once here (with configs/common.py's sections). Not a config to run: the model
recipes name their model on top of `recipe()`, and configs/tiny_sft.py changes what a CPU run needs.

lr 1e-5, cosine decay, warmup ratio 0.05, 2 epochs, sequences cut off at 32768 tokens (a longer
record stops the run before step 1, naming it, unless data.drop_oversized), images at most 262144
pixels, vision tower and merger frozen. bfloat16 compute over float32 master weights, per-layer
rematerialisation, chunked cross-entropy (the 152k-entry vocabulary). The model and its tokenizer
are read from `model.path` (an HF checkpoint directory); data from `data.paths` (ShareGPT
JSON/JSONL or Parquet, comma-separated).

Batch: `data.batch_size` rows per microbatch (all hosts; a multiple of data x fsdp) times
`train.grad_accum` microbatches = 8 x 4 = 32 sequences per optimizer step. The vision tower
attends densely over a microbatch's patches, so `data.patch_budget` (patches per host and
microbatch) is what bounds its memory. Multi-host: add `--config.distributed.num_processes=N`.
"""

import ml_collections

from configs import common


def recipe():
  """The recipe without its model (`model.path`, `model.preset`: the model recipe states them)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Initialisation of weights the checkpoint does not hold.
  c.model = common.model()

  c.data = common.data()
  c.data.drop_oversized = False  # Records longer than the largest bucket, or with more patches
  # or images than a batch holds: False refuses to start naming
  # them (file:index) and the setting that fits them; True drops
  # them, counted in the summary, TensorBoard, dropped_records.jsonl.
  c.data.size_cache = ""  # Record sizes: "" <workdir>/size_cache, "off", or a folder.
  c.data.synthetic_size = 5000  # Records of source="synthetic" (CodeVision's SFT set has ~5K).
  c.data.num_epochs = 2  # Passes over the records (when train.steps is 0).
  c.data.buckets = (2048, 4096, 8192, 16384, 32768)  # Padded lengths; 32768: the cutoff.
  c.data.sort_window = 8  # Sort each 8 steps' records by length (less padding); 0: off.
  c.data.groups = 0  # Row groups per microbatch (0: one per process); fixed,
  # the batches are the same for any process count.
  c.data.packing = "none"  # Sequence packing: "first_fit" or "best_fit" put several records
  # in a row (each its own attention segment); "none": one per row.
  c.data.batch_size = 8  # Rows of one microbatch, all hosts together.
  c.data.patch_budget = 8192  # Image patches per host and microbatch (a multiple of 4).
  c.data.max_images = 32  # Images per host and microbatch.
  c.data.max_pixels = 262144  # Images larger than this are resized down to it.
  c.data.workers = 4  # Grain worker processes building batches (0: the main process).
  c.data.prefetch_buffer = 2  # Batches built ahead of the step.

  c.optim = common.optim(lr=1e-5, schedule="cosine", warmup_ratio=0.05, weight_decay=0.0)

  c.train = common.train()
  c.train.steps = 0  # Optimizer steps; 0: data.num_epochs epochs.
  c.train.grad_accum = 4  # Microbatches per optimizer step.
  c.train.log_every = 10  # Steps between metric lines.
  c.train.checkpoint_every = 200  # Steps between checkpoints.

  c.mesh = common.mesh()
  c.distributed = common.distributed()
  return c


def smoke(c, preset, max_pixels):
  """The recipe `c`'s smoke test (`--config=configs/<recipe>.py:smoke`): its own code path with the
  tiny model of `preset` swapped in, one step on CPU in about a minute (tests/test_recipes.py runs
  it on 8 CPU devices). On a 2-core, 24 GB machine it needs short synthetic records (no system
  prompt), small images (`max_pixels`: a few hundred patches of the family's patch size) and one
  1024-token bucket: XLA's attention on CPU holds score matrices of rows x heads x T^2 (8 rows of
  4096 tokens ask for 27 GB; add --dry_run to see XLA's figure before running)."""
  common.tiny_model(c, preset, max_pixels)
  c.data.synthetic_size = 64
  c.data.buckets = (1024,)
  c.data.workers = 0
  c.train.steps = 1
  return c
