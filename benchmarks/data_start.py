"""Start-up time of the data: sizing every record before the first step, cold (no size cache)
and cached, in one run.

    python -m benchmarks.data_start [--records=100000] [--workers=0] [--tokenizer=DIR]
        [--dir=DIR] [--serial]

Writes `--records` synthetic SFT records as JSONL (the full CodeVision format: system prompt, tool
schemas, multi-turn trajectories; the images of 512 distinct tasks, as PNG files, shared round
robin), reads them, then times `size_cache.record_sizes` as `train.loop` calls it: cold into an
empty cache folder (every record tokenised and every image checked, in `--workers` processes;
0: all cores) and again from the cache. Prints the read time, both sizing times and the ratio;
`--serial` adds a cold pass in the main process (the workers' speed-up).
The tokenizer is `--tokenizer` (e.g. a Qwen checkpoint's folder) or the tiny test tokenizer.
"""

import os
import shutil
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("records", 100_000, "records in the data file")
flags.DEFINE_integer("workers", 0, "sizing worker processes (0: every core)")
flags.DEFINE_string("tokenizer", "", "tokenizer folder (default: the tiny test tokenizer)")
flags.DEFINE_string("dir", "", "folder for the data and the cache (default: a temporary one)")
flags.DEFINE_bool("serial", False, "also time a cold pass in this one process (no workers)")

_DISTINCT = 512  # Distinct tasks (and images); the records repeat them.


def write_data(directory: str, n: int) -> str:
  """`n` JSONL records over `_DISTINCT` synthetic tasks (their PNGs written once) -> the path."""
  from codevision_jax.data import synthetic, writers

  pool = os.path.join(directory, "pool.jsonl")
  writers.write_sft_jsonl(synthetic.generate(min(n, _DISTINCT), seed=0), pool)
  with open(pool, encoding="utf-8") as f:
    lines = f.read().splitlines()
  path = os.path.join(directory, "data.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):  # The pool's image paths (pool_images/...) hold in this directory too.
      f.write(lines[i % len(lines)] + "\n")
  return path


def main(argv):
  del argv
  from codevision_jax.data import size_cache
  from codevision_jax.data.sources import ConversationSource
  from codevision_jax.processing import image as image_lib, tokenizer as tok_lib

  directory = FLAGS.dir or tempfile.mkdtemp(prefix="data_start_")
  os.makedirs(directory, exist_ok=True)
  workers = FLAGS.workers or os.cpu_count()
  try:
    t = time.perf_counter()
    path = write_data(directory, FLAGS.records)
    print(f"wrote {FLAGS.records} records in {time.perf_counter() - t:.1f} s ({os.path.getsize(path) / 2**20:.1f} MiB)")
    tok_dir = FLAGS.tokenizer or tok_lib.build_tiny_tokenizer(os.path.join(directory, "tok"))
    tokenizer = tok_lib.load_tokenizer(tok_dir)
    settings = image_lib.ImageSettings.for_model_type("qwen2_5_vl")
    cache = os.path.join(directory, "size_cache")
    shutil.rmtree(cache, ignore_errors=True)

    t = time.perf_counter()
    source = ConversationSource.from_files([path])
    read = time.perf_counter() - t

    def sized(directory=cache, workers=workers):
      t = time.perf_counter()
      sizes = size_cache.record_sizes(source, tokenizer, settings, cache_dir=directory, workers=workers)
      return time.perf_counter() - t, sizes

    cold, cold_sizes = sized()
    cached, cached_sizes = sized()
    assert (cold_sizes == cached_sizes).all()
    n = len(source)
    print(f"read {n} records: {read:.2f} s")
    print(f"sizing cold ({workers} workers): {cold:.2f} s ({n / cold:.0f} records/s)")
    print(f"sizing cached: {cached:.3f} s ({n / cached:.0f} records/s)")
    print(f"start-up (read + sizing): cold {read + cold:.2f} s, cached {read + cached:.2f} s")
    print(f"ratio (cold / cached sizing): {cold / cached:.1f}x; start-up: {(read + cold) / (read + cached):.1f}x")
    if FLAGS.serial:
      serial, serial_sizes = sized(directory=None, workers=0)
      assert (serial_sizes == cold_sizes).all()
      print(
        f"sizing cold in this process: {serial:.2f} s ({n / serial:.0f} records/s); "
        f"{workers} workers: {serial / cold:.2f}x"
      )
  finally:
    if not FLAGS.dir:
      shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
