"""python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --workdir=DIR --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.paths=/data/codevision_sft.json

CodeVision's SFT recipe for Qwen2.5-VL-7B: lr 1e-5, cosine decay, warmup ratio 0.05, 2 epochs,
sequences cut off at 32768 tokens (longer ones are dropped, see data.pipeline), images at most
262144 pixels, vision tower and merger frozen. bfloat16 compute over float32 master weights,
per-layer rematerialisation, chunked cross-entropy (the 152k-entry vocabulary). The model and
its tokenizer are read from `model.path` (an HF checkpoint directory); data from `data.paths`
(ShareGPT JSON/JSONL or Parquet, comma-separated).

Batch: `data.batch_size` rows per microbatch (all hosts; a multiple of data x fsdp) times
`train.grad_accum` microbatches = 8 x 4 = 32 sequences per optimizer step. The vision tower
attends densely over a microbatch's patches, so `data.patch_budget` (patches per host and
microbatch) is what bounds its memory. Multi-host: add `--config.distributed.num_processes=N`.
"""

from configs import tiny_sft


def get_config():
  c = tiny_sft.get_config()
  c.model.path = ""  # Required: --config.model.path=...
  c.model.preset = ""
  c.model.vocab_size = 0
  c.model.param_dtype = "float32"
  c.model.attention_backend = "xla"  # "cudnn" on NVIDIA GPUs.

  c.data.source = "files"
  c.data.paths = ""  # Required: --config.data.paths=...
  c.data.synthetic_short = False
  c.data.num_epochs = 2
  c.data.buckets = (2048, 4096, 8192, 16384, 32768)  # 32768: the cutoff.
  c.data.batch_size = 8
  c.data.patch_budget = 8192
  c.data.max_images = 32
  c.data.min_pixels = 0  # 0: the family's default.
  c.data.max_pixels = 262144
  c.data.workers = 4
  c.data.prefetch_buffer = 2

  c.optim.lr = 1e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.05
  c.optim.final_lr_ratio = 0.0
  c.optim.weight_decay = 0.0
  c.optim.max_grad_norm = 1.0

  c.train.steps = 0  # 0: data.num_epochs epochs.
  c.train.grad_accum = 4
  c.train.compute_dtype = "bfloat16"
  c.train.remat = "full"
  c.train.loss_chunk = 2048
  c.train.freeze_vision_tower = True
  c.train.freeze_merger = True
  c.train.log_every = 10
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3

  c.mesh.shape.update({"data": 1, "fsdp": -1, "tensor": 1})
  return c
