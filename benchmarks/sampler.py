"""Decode speed on CPU: the JAX sampler against transformers' `generate`, on the same tiny model.

    python -m benchmarks.sampler [--family=qwen2_5_vl] [--batch=1,8,32] [--new_tokens=64] [--runs=3]

One small random model (4 decoder layers of hidden 256, vocabulary 8192, 2 vision blocks of
hidden 128, float32) is built in transformers, saved, and loaded with `cvj.load_hf`, so both sides
hold the same weights. Each row's prompt is text around one 112x112 image (16 image tokens),
left-padded to the longest row. Both sides decode greedily, without stop tokens, exactly
`--new_tokens` tokens per row.

Decode tokens/s = batch x (new_tokens - 1) / (t(new_tokens) - t(1)), where t(n) is the median
wall time of a whole generate call for n new tokens: the difference removes prefill (vision tower
included) and per-call overheads, leaving the decode steps. The sampler is compiled before timing
(a warm-up call per shape). Transformers runs under `torch.no_grad()` with attention "eager" and
as many torch threads as the cores JAX sees (`--torch_threads` to change). Also checks that both sides produce the same tokens.
Target: at least 3x transformers' decode tokens/s at batch 8.

Not measured here (comes with the agent loop): the fraction of time the sampler idles while
trajectories wait for the code executor.
"""

import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "qwen2_5_vl", "qwen2_5_vl or qwen3_vl")
flags.DEFINE_list("batch", ["1", "8", "32"], "batch sizes")
flags.DEFINE_integer("new_tokens", 64, "tokens generated per row")
flags.DEFINE_integer("runs", 3, "timed calls per measurement (the median is used)")
flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: as many as the cores JAX sees)")

TARGET = 3.0
TARGET_BATCH = 8
VOCAB = 8192
IMAGE, VIDEO, VSTART, VEND = VOCAB - 6, VOCAB - 5, VOCAB - 4, VOCAB - 3
PAD = 0


def _hf_config(family: str):
  import transformers
  text = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              max_position_embeddings=32768)
  vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, spatial_merge_size=2,
                temporal_patch_size=2, out_hidden_size=256)
  ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART,
             vision_end_token_id=VEND)
  if family == "qwen2_5_vl":
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
    vision.update(patch_size=14, window_size=56, fullatt_block_indexes=[1])
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
  if family == "qwen3_vl":
    text.update(head_dim=64, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                              "mrope_section": [12, 10, 10], "mrope_interleaved": True})
    vision.update(patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0])
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
  raise ValueError(f"--family {family!r}: expected qwen2_5_vl or qwen3_vl")


def _prompts(batch: int, patch: int):
  """Left-padded rows of text, one 8x8-patch image (16 tokens), text."""
  import numpy as np
  rng = np.random.default_rng(batch)
  rows = []
  for _ in range(batch):
    rows.append(list(rng.integers(1, VOCAB - 8, rng.integers(4, 12))) + [VSTART] + [IMAGE] * 16 +
                [VEND] + list(rng.integers(1, VOCAB - 8, rng.integers(4, 12))))
  length = max(map(len, rows))
  ids = np.full((batch, length), PAD, np.int64)
  mask = np.zeros((batch, length), np.int64)
  for i, r in enumerate(rows):
    ids[i, length - len(r):] = r
    mask[i, length - len(r):] = 1
  grid = np.tile(np.asarray([[1, 8, 8]], np.int64), (batch, 1))
  pv = rng.standard_normal((batch * 64, 3 * 2 * patch * patch)).astype(np.float32)
  return ids, mask, pv, grid


def _median_seconds(fn, runs: int) -> float:
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _bench_batch(hf, ours, batch: int, patch: int) -> tuple[float, float]:
  import jax
  import numpy as np
  import torch

  from codevision_jax.sampling import Sampler

  ids, mask, pv, grid = _prompts(batch, patch)
  n = FLAGS.new_tokens
  sampler = Sampler(ours, pad_token_id=PAD)

  def ours_run(new):
    tokens, logprobs = sampler.generate(ids, pv, grid, mask, max_new_tokens=new)
    return np.asarray(jax.block_until_ready(tokens))

  hf_inputs = dict(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                   pixel_values=torch.as_tensor(pv), image_grid_thw=torch.as_tensor(grid),
                   mm_token_type_ids=torch.as_tensor((ids == IMAGE).astype(np.int64)))

  def hf_run(new):
    with torch.no_grad():
      out = hf.generate(**hf_inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                        pad_token_id=PAD, eos_token_id=None)
    return out[:, ids.shape[1]:].numpy()

  same = (ours_run(n) == hf_run(n)).mean()  # also the warm-up (compilation) of both lengths
  ours_run(1)
  hf_run(1)
  rates = []
  for run in (ours_run, hf_run):
    t_full, t_one = _median_seconds(lambda: run(n), FLAGS.runs), _median_seconds(lambda: run(1), FLAGS.runs)
    rates.append(batch * (n - 1) / max(t_full - t_one, 1e-9))
  print(f"  batch {batch:3d}: sampler {rates[0]:9.0f} tok/s   transformers {rates[1]:8.0f} tok/s   "
        f"ratio {rates[0] / rates[1]:6.2f}x   (prompt {ids.shape[1]} tokens; greedy tokens equal: "
        f"{same:.1%})")
  return rates[0], rates[1]


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import torch
  import transformers

  import codevision_jax as cvj

  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch.set_num_threads(FLAGS.torch_threads or threads)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {threads} cores, "
        f"{torch.get_num_threads()} torch threads")
  torch.manual_seed(0)
  hf_config = _hf_config(FLAGS.family)
  hf_config._attn_implementation = "eager"
  hf = transformers.AutoModelForImageTextToText.from_config(hf_config, dtype=torch.float32).eval()
  root = tempfile.mkdtemp(prefix="cvj-sampler-bench-")
  try:
    hf.save_pretrained(root)
    ours = cvj.load_hf(root, dtype="float32")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  patch = hf_config.vision_config.patch_size
  print(f"{FLAGS.family}: decoder 4x256, vocab {VOCAB}, float32; greedy, {FLAGS.new_tokens} new "
        f"tokens per row; decode tokens/s (prefill excluded)")
  ratios = {}
  for batch in (int(b) for b in FLAGS.batch):
    ours_rate, hf_rate = _bench_batch(hf, ours, batch, patch)
    ratios[batch] = ours_rate / hf_rate
  summary = ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items())
  print(f"summary: {summary}")
  if TARGET_BATCH in ratios:
    print(f"batch {TARGET_BATCH}: {ratios[TARGET_BATCH]:.2f}x (target >= {TARGET}x)")


if __name__ == "__main__":
  app.run(main)
