"""python -m launch.sft --config=configs/tiny_sft.py --workdir=/tmp/tiny_sft

SFT of the tiny Qwen2.5-VL (random init, tiny tokenizer built into the workdir) on synthetic
orientation/crop trajectories, on CPU in a few minutes. The synthetic records drop their system
prompt and tool schemas here (`data.synthetic_short`): with the tiny byte-level tokenizer those
alone are ~1000 tokens, which makes a CPU step several times slower. It is the real SFT recipe
(configs/base_sft.py, every value and what it does) with what a CPU run needs changed, below.
Every field can be overridden, e.g. `--config.train.steps=20 --config.mesh.shape.fsdp=1`.
"""

from configs import base_sft, common


def get_config():
  c = base_sft.recipe()
  c.model.path = ""  # An HF checkpoint directory; empty: a random `preset`.
  common.tiny_model(c, "qwen2_5_vl_tiny", max_pixels=28 * 28 * 16)
  c.data.min_pixels = 28 * 28 * 4  # Images of 4 to 16 tokens of 28 x 28 pixels.
  c.data.synthetic_size = 256  # Records.
  c.data.num_epochs = 1
  c.data.buckets = (256, 512, 768)  # Padded sequence lengths; the largest is the cutoff.
  c.data.batch_size = 4  # Rows of one microbatch.
  c.data.patch_budget = 512  # Image patches per host and microbatch.
  c.data.max_images = 8  # Images per host and microbatch.
  c.data.workers = 0  # Build batches in the main process.

  c.optim.lr = 1e-3  # The toy model learns fast; the schedule is the recipe's.

  c.train.steps = 60
  c.train.grad_accum = 1
  c.train.compute_dtype = "float32"  # Full precision on CPU.
  c.train.remat = "none"  # Nothing to save on a toy model,
  c.train.loss_chunk = 0  # ... nor on its 512-entry vocabulary.
  c.train.log_every = 5
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  c.train.sigterm_grace_s = 0.0  # Wait for the step in flight (a CPU step is short).
  return c
