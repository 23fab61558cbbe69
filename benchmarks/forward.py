"""Forward-pass speed on CPU: the jitted Flax model against transformers' eager PyTorch forward.

    python -m benchmarks.forward [--family=qwen2_5_vl,qwen3_vl] [--runs=10] [--warmup=2]

For each family, one small random model (4 decoder layers of hidden 512, 4 vision blocks of
hidden 256, float32) is built in transformers, saved, and loaded with `cvj.load_hf`, so both sides
hold the same weights. The input is one 448x448 image through `cvj.preprocess_images` with the
family's processor settings, inside a 512-token sequence. Timed: `model.forward` under `nnx.jit`
(host-side metadata from `model.prepare` is computed once, outside the timed region, as the input
pipeline does) against `model(**inputs)` of transformers under `torch.no_grad()`, attention
"eager" (the reference) and "sdpa" (for information), with torch using as many threads as the
cores JAX sees. Prints the median of `--runs` timed calls after `--warmup` calls, the max logit
difference between the two, and the ratio; target: at least 1.5x faster than eager.
"""

import copy
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("family", ["qwen2_5_vl", "qwen3_vl"], "model families to measure")
flags.DEFINE_integer("runs", 10, "timed calls per implementation (the median is reported)")
flags.DEFINE_integer("warmup", 2, "untimed calls first (compilation, allocator warm-up)")
flags.DEFINE_integer("tokens", 512, "sequence length (image tokens included)")
flags.DEFINE_integer("image_size", 448, "side of the square input image, in pixels")
flags.DEFINE_integer(
  "threads",
  0,
  "CPU threads for both sides (0: every core this process may use); "
  "1 also makes XLA single-threaded, the measure least disturbed by other load",
)

TARGET = 1.5
VOCAB = 16384
IMAGE, VIDEO, VSTART, VEND = VOCAB - 6, VOCAB - 5, VOCAB - 4, VOCAB - 3


def _hf_config(family: str):
  import transformers

  text = dict(
    vocab_size=VOCAB,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
  )
  vision = dict(
    depth=4,
    hidden_size=256,
    intermediate_size=1024,
    num_heads=4,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=512,
  )
  ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND)
  if family == "qwen2_5_vl":
    text.update(
      bos_token_id=0,
      eos_token_id=1,
      rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
    )
    vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[1, 3])
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
  if family == "qwen3_vl":
    text.update(
      head_dim=64,
      rope_parameters={
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": [12, 10, 10],
        "mrope_interleaved": True,
      },
    )
    vision.update(patch_size=16, num_position_embeddings=2304, deepstack_visual_indexes=[0, 1, 2])
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
  raise ValueError(f"--family {family!r}: expected qwen2_5_vl or qwen3_vl")


def _inputs(family: str):
  import numpy as np
  from PIL import Image

  import codevision_jax as cvj
  from codevision_jax.processing.image import ImageSettings

  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (FLAGS.image_size, FLAGS.image_size, 3), np.uint8))
  pv, grid = cvj.preprocess_images([image], **ImageSettings.for_model_type(family).as_kwargs())
  n_image = int(grid.prod()) // 4
  n_text = FLAGS.tokens - n_image - 2
  if n_text < 2:
    raise ValueError(f"--tokens {FLAGS.tokens} leaves no room for text around {n_image} image tokens")
  before = n_text // 4
  ids = np.concatenate(
    [
      rng.integers(0, VOCAB - 8, before),
      [VSTART],
      np.full(n_image, IMAGE),
      [VEND],
      rng.integers(0, VOCAB - 8, n_text - before),
    ]
  )[None].astype(np.int64)
  return ids, np.ones_like(ids), pv, grid


def _median_seconds(fns: dict, runs: int, warmup: int) -> dict:
  """Median wall time of each callable. Calls alternate between the callables, so that load from
  other processes on a shared machine falls on all of them alike."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def _bench(family: str, threads: int) -> float:
  import jax
  import numpy as np
  import torch
  import transformers
  from flax import nnx

  import codevision_jax as cvj

  torch.manual_seed(0)
  hf_config = _hf_config(family)
  hf = transformers.AutoModelForImageTextToText.from_config(hf_config, dtype=torch.float32).eval()
  root = tempfile.mkdtemp(prefix="cvj-forward-bench-")
  try:
    hf.save_pretrained(root)
    ours = cvj.load_hf(root, dtype="float32")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  ids, mask, pv, grid = _inputs(family)

  position_ids, meta = ours.prepare(ids, grid, mask)
  forward = nnx.jit(lambda m, *a: m.forward(*a))
  args = (
    jax.numpy.asarray(ids),
    jax.numpy.asarray(pv),
    meta.as_arrays(),
    jax.numpy.asarray(mask),
    jax.numpy.asarray(position_ids),
  )
  flax_logits = np.asarray(forward(ours, *args))

  t_inputs = dict(
    input_ids=torch.as_tensor(ids),
    attention_mask=torch.as_tensor(mask),
    pixel_values=torch.as_tensor(pv),
    image_grid_thw=torch.as_tensor(grid),
    mm_token_type_ids=torch.as_tensor((ids == IMAGE).astype(np.int64)),
  )

  def hf_forward(impl):
    model = copy.deepcopy(hf)  # one copy per attention implementation: no switching while timed
    model.set_attn_implementation(impl)

    def run():
      with torch.no_grad():
        return model(**t_inputs).logits

    return run

  diff = float(np.abs(hf_forward("eager")().numpy() - flax_logits).max())
  results = _median_seconds(
    {
      "flax": lambda: forward(ours, *args).block_until_ready(),
      "eager": hf_forward("eager"),
      "sdpa": hf_forward("sdpa"),
    },
    FLAGS.runs,
    FLAGS.warmup,
  )
  t_flax = results["flax"]
  ratio = results["eager"] / t_flax
  # The roofline reference: the forward's FLOPs (XLA's count) at the rate of a float32 matmul of
  # the LM head's shape, measured here for both libraries.
  flops = forward.lower(ours, *args).compile().cost_analysis()["flops"]
  a = np.random.default_rng(0).standard_normal((FLAGS.tokens, 512), np.float32)
  b = np.random.default_rng(1).standard_normal((512, VOCAB), np.float32)
  ja, jb, ta, tb = jax.numpy.asarray(a), jax.numpy.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
  matmul = jax.jit(lambda x, y: x @ y)
  mm = _median_seconds(
    {"jax": lambda: matmul(ja, jb).block_until_ready(), "torch": lambda: ta @ tb}, FLAGS.runs, FLAGS.warmup
  )
  rate = 2 * a.shape[0] * a.shape[1] * b.shape[1] / min(mm.values())
  print(
    f"{family}: {ids.shape[1]} tokens ({int(grid.prod()) // 4} image tokens from a "
    f"{FLAGS.image_size}x{FLAGS.image_size} image, grid {grid.tolist()[0]}), float32, "
    f"{threads} threads"
  )
  print(f"  flax (nnx.jit)            {t_flax * 1e3:8.1f} ms")
  print(f"  transformers eager        {results['eager'] * 1e3:8.1f} ms")
  print(f"  transformers sdpa         {results['sdpa'] * 1e3:8.1f} ms  (information)")
  print(f"  max |logit difference|    {diff:.2e}")
  print(
    f"  forward FLOPs (XLA count) {flops / 1e9:8.1f} G; float32 matmul {rate / 1e9:.0f} GFLOP/s "
    f"(jax {mm['jax'] * 1e3:.1f} ms, torch {mm['torch'] * 1e3:.1f} ms on {a.shape[0]}x{a.shape[1]}x{b.shape[1]})"
  )
  print(
    f"  matmul-rate floor         {flops / rate * 1e3:8.1f} ms  (eager is {results['eager'] * rate / flops:.2f}x "
    f"the floor, flax {t_flax * rate / flops:.2f}x)"
  )
  print(f"  speed-up over eager       {ratio:.2f}x  (target >= {TARGET}x; over sdpa {results['sdpa'] / t_flax:.2f}x)")
  return ratio


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  threads = FLAGS.threads or cores
  if threads == 1:  # Before JAX initialises its CPU client.
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
  elif threads != cores:
    raise ValueError(f"--threads {threads}: use 1 or {cores} (XLA's CPU pool takes every core)")
  import jax
  import torch

  torch.set_num_threads(threads)  # XLA's CPU client sizes its pool to the same cores.
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}")
  ratios = {family: _bench(family, threads) for family in FLAGS.family}
  print("summary: " + ", ".join(f"{f} {r:.2f}x" for f, r in ratios.items()))


if __name__ == "__main__":
  app.run(main)
