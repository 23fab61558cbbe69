"""Decode speed on CPU: the JAX sampler against transformers' `generate`, on the same tiny model.

    python -m benchmarks.sampler [--family=qwen2_5_vl] [--batch=1,8,32] [--new_tokens=64] [--runs=3]
        [--model=tiny|small [--layers=4 --hidden=256 --vocab=8192]] [--torch_threads=1,2]
        [--scan_layers]

One random model, float32: by default the project's tiny preset of the family (`qwen2_5_vl_tiny`:
4 decoder layers of hidden 128, vocabulary 512, 4 vision blocks of hidden 64); `--model=small`
is 4 decoder layers of hidden 256 with a vocabulary of 8192 and 2 vision blocks of hidden 128
(`--layers/--hidden/--vocab` change its decoder) is built in transformers, saved, and loaded with `cvj.load_hf`, so both sides
hold the same weights. Each row's prompt is text around one 112x112 image (16 image tokens),
left-padded to the longest row. Both sides decode greedily, without stop tokens, exactly
`--new_tokens` tokens per row.

Decode tokens/s = batch x (new_tokens - 1) / (t(new_tokens) - t(1)), where t(n) is the wall time
of a whole generate call for n new tokens (the median over `--runs` back-to-back pairs): the
difference removes prefill (vision tower included) and per-call overheads, leaving the decode
steps. The sampler is compiled before timing
(a warm-up call per shape). Transformers runs under `torch.no_grad()` with attention "eager", once
with 1 torch thread and once with as many as the cores JAX sees (`--torch_threads`); the faster
is the reference (on a shared machine, torch's multi-threaded kernels can be far slower than one
thread, which would flatter the ratio). Also checks that both sides produce the same tokens.
Target: at least 3x transformers' decode tokens/s at batch 8.

`--scan_layers` also times the same weights with scanned decoder layers (`model.scan_layers`)
and prints their rate over the unscanned sampler's, measured in the same run.

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
flags.DEFINE_list(
  "torch_threads",
  [],
  "torch intra-op thread counts to measure transformers with "
  "(default: 1 and the number of cores JAX sees); the fastest is the reference",
)

flags.DEFINE_enum(
  "model",
  "tiny",
  ["tiny", "small"],
  "tiny: the project's `<family>_tiny` preset; small: a decoder of --layers x --hidden with a --vocab vocabulary",
)
flags.DEFINE_integer("hidden", 256, "decoder width (--model=small)")
flags.DEFINE_integer("layers", 4, "decoder layers (--model=small)")
flags.DEFINE_integer("vocab", 8192, "vocabulary size (--model=small)")
flags.DEFINE_bool(
  "scan_layers",
  False,
  "also time the same weights loaded with scanned decoder "
  "layers (`model.scan_layers`) and print its rate over the unscanned one",
)

TARGET = 3.0
TARGET_BATCH = 8
PAD = 0


def _special_ids():
  """image, video, vision start, vision end: the tiny presets' (the tiny tokenizer's) ids, or the
  top of the vocabulary for --model=small."""
  if FLAGS.model == "tiny":
    from codevision_jax.models import presets

    t = presets.TINY_TOKENIZER_IDS
    return t["image_token_id"], t["video_token_id"], t["vision_start_token_id"], t["vision_end_token_id"]
  v = FLAGS.vocab
  return v - 6, v - 5, v - 4, v - 3


def _hf_config(family: str):
  import transformers

  if FLAGS.model == "tiny":
    from codevision_jax.models import presets

    d = presets.preset(f"{family}_tiny").to_hf_dict()
    d.pop("architectures")
    return transformers.AutoConfig.for_model(d.pop("model_type"), **d)
  hidden = FLAGS.hidden
  text = dict(
    vocab_size=FLAGS.vocab,
    hidden_size=hidden,
    intermediate_size=3 * hidden,
    num_hidden_layers=FLAGS.layers,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
  )
  vision = dict(
    depth=2,
    hidden_size=128,
    intermediate_size=256,
    num_heads=2,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=hidden,
  )
  image, video, vstart, vend = _special_ids()
  ids = dict(image_token_id=image, video_token_id=video, vision_start_token_id=vstart, vision_end_token_id=vend)
  half = hidden // 4 // 2  # head_dim / 2, split t:h:w about 1:1.5:1.5 as in the real models
  section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
  if family == "qwen2_5_vl":
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section})
    vision.update(patch_size=14, window_size=56, fullatt_block_indexes=[1])
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
  if family == "qwen3_vl":
    text.update(
      head_dim=hidden // 4,
      rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": section, "mrope_interleaved": True},
    )
    vision.update(patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0])
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
  raise ValueError(f"--family {family!r}: expected qwen2_5_vl or qwen3_vl")


def _prompts(batch: int, patch: int):
  """Left-padded rows of text, one 8x8-patch image (16 tokens), text."""
  import numpy as np

  image, _, vstart, vend = _special_ids()
  rng = np.random.default_rng(batch)
  rows = []
  for _ in range(batch):
    rows.append(
      list(rng.integers(1, min(_special_ids()) - 1, rng.integers(4, 12)))
      + [vstart]
      + [image] * 16
      + [vend]
      + list(rng.integers(1, min(_special_ids()) - 1, rng.integers(4, 12)))
    )
  length = max(map(len, rows))
  ids = np.full((batch, length), PAD, np.int64)
  mask = np.zeros((batch, length), np.int64)
  for i, r in enumerate(rows):
    ids[i, length - len(r) :] = r
    mask[i, length - len(r) :] = 1
  grid = np.tile(np.asarray([[1, 8, 8]], np.int64), (batch, 1))
  pv = rng.standard_normal((batch * 64, 3 * 2 * patch * patch)).astype(np.float32)
  return ids, mask, pv, grid


def decode_rate(run, *, batch: int, new_tokens: int, runs: int) -> float:
  """Decode tokens/s of `run(n)` (a whole generate call for n new tokens per row, which returns
  when done), from the median over `runs` of t(new_tokens) - t(1), timed back to back: prefill
  and per-call overheads cancel."""
  diffs = []
  for _ in range(runs):
    t0 = time.perf_counter()
    run(new_tokens)
    t1 = time.perf_counter()
    run(1)
    diffs.append((t1 - t0) - (time.perf_counter() - t1))
  diff = statistics.median(diffs)
  if diff <= 0:
    raise RuntimeError(
      f"decoding {new_tokens - 1} more tokens took no measurable time (t(n) - "
      f"t(1) = {diff:.2e}s); raise --new_tokens or --runs"
    )
  return batch * (new_tokens - 1) / diff


def _bench_batch(hf, ours, batch: int, patch: int, torch_threads: list[int], scanned=None) -> tuple[float, float]:
  import jax
  import numpy as np
  import torch

  from codevision_jax.sampling import Sampler

  ids, mask, pv, grid = _prompts(batch, patch)
  n = FLAGS.new_tokens
  sampler = Sampler(ours, pad_token_id=PAD)

  def run_of(sampler):
    def run(new):
      tokens, _ = sampler.generate(ids, pv, grid, mask, max_new_tokens=new)
      return np.asarray(jax.block_until_ready(tokens))

    return run

  ours_run = run_of(sampler)

  hf_inputs = dict(
    input_ids=torch.as_tensor(ids),
    attention_mask=torch.as_tensor(mask),
    pixel_values=torch.as_tensor(pv),
    image_grid_thw=torch.as_tensor(grid),
    mm_token_type_ids=torch.as_tensor((ids == _special_ids()[0]).astype(np.int64)),
  )

  def hf_run(new):
    with torch.no_grad():
      out = hf.generate(
        **hf_inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=PAD, eos_token_id=None
      )
    return out[:, ids.shape[1] :].numpy()

  def rate(run):
    return decode_rate(run, batch=batch, new_tokens=n, runs=FLAGS.runs)

  same = (ours_run(n) == hf_run(n)).mean()  # also the warm-up (compilation) of both lengths
  ours_run(1)
  ours_rate = rate(ours_run)
  hf_rates = {}
  for threads in torch_threads:
    torch.set_num_threads(threads)
    hf_run(1)
    hf_rates[threads] = rate(hf_run)
  hf_rate = max(hf_rates.values())
  hf_text = "  ".join(f"{r:6.0f} ({t} thr)" for t, r in hf_rates.items())
  print(
    f"  batch {batch:3d}: sampler {ours_rate:7.0f} tok/s   transformers {hf_text}   "
    f"ratio {ours_rate / hf_rate:5.2f}x   (prompt {ids.shape[1]} tokens; greedy tokens equal: "
    f"{same:.1%})"
  )
  if scanned is not None:
    scanned_run = run_of(Sampler(scanned, pad_token_id=PAD))
    same = (scanned_run(n) == ours_run(n)).mean()  # also its warm-up
    scanned_run(1)
    scanned_rate = rate(scanned_run)
    print(
      f"             scanned layers {scanned_rate:7.0f} tok/s: "
      f"{scanned_rate / ours_rate:5.2f}x the unscanned sampler (tokens equal: {same:.1%})"
    )
  return ours_rate, hf_rate


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import torch
  import transformers

  import codevision_jax as cvj

  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch_threads = sorted({int(t) for t in FLAGS.torch_threads} or {1, threads})
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
    f"transformers {transformers.__version__}, {threads} cores"
  )
  torch.manual_seed(0)
  hf_config = _hf_config(FLAGS.family)
  hf_config._attn_implementation = "eager"
  hf = transformers.AutoModelForImageTextToText.from_config(hf_config, dtype=torch.float32).eval()
  root = tempfile.mkdtemp(prefix="cvj-sampler-bench-")
  try:
    hf.save_pretrained(root)
    ours = cvj.load_hf(root, dtype="float32")
    scanned = cvj.load_hf(root, dtype="float32", scan_layers=True) if FLAGS.scan_layers else None
  finally:
    shutil.rmtree(root, ignore_errors=True)
  patch = hf_config.vision_config.patch_size
  tc = hf_config.text_config
  print(
    f"{FLAGS.family} ({FLAGS.model}): decoder {tc.num_hidden_layers}x{tc.hidden_size}, vocab "
    f"{tc.vocab_size}, float32; greedy, {FLAGS.new_tokens} new "
    f"tokens per row; decode tokens/s (prefill excluded); ratio against the faster transformers"
  )
  ratios = {}
  for batch in (int(b) for b in FLAGS.batch):
    ours_rate, hf_rate = _bench_batch(hf, ours, batch, patch, torch_threads, scanned)
    ratios[batch] = ours_rate / hf_rate
  summary = ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items())
  print(f"summary: {summary}")
  if TARGET_BATCH in ratios:
    print(f"batch {TARGET_BATCH}: {ratios[TARGET_BATCH]:.2f}x (target >= {TARGET}x)")


if __name__ == "__main__":
  app.run(main)
