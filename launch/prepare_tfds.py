"""python -m launch.prepare_tfds --input=sft.jsonl --kind=sft --name=codevision_sft --data_dir=DIR

Converts record files (ShareGPT JSON/JSONL/Parquet, verl RL parquet; docs/data.md) once into a
TFDS data set of ArrayRecord files, images included as their encoded bytes, so that every host
trains from `DIR/NAME/1.0.0/` (`--config.data.source=tfds`) without the original files and image
folders. Records are read and checked as `data.source=files` reads them: a bad one stops the
command with its file and row (`--skip_bad` skips and counts it), and so does an image file that
is missing or not an image. Prints a progress line, a summary (records, bytes, where) and the
flags of launch.sft / launch.rl that read the set. No TensorFlow needed.
"""

import sys
import time

from absl import flags

from launch import errors, shell

_INPUT = flags.DEFINE_list("input", None, "Record files, comma-separated, read in this order.")
_KIND = flags.DEFINE_enum(
  "kind",
  "sft",
  ["sft", "rl"],
  "sft: trajectories with assistant turns (launch.sft); rl: prompts with ground truth (launch.rl, evals).",
)
_NAME = flags.DEFINE_string("name", None, "The data set's name (snake_case): data.tfds_name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory to write it under: data.tfds_dir.")
_SPLIT = flags.DEFINE_string("split", "train", "The split written: data.tfds_split.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip and count bad records instead of stopping.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing set of the same name.")
flags.mark_flags_as_required(["input", "name", "data_dir"])


def _mb(n: int) -> str:
  return f"{n / 2**20:,.1f} MiB"


def main(argv):
  del argv
  from codevision_jax.data import readers, tfds_source

  start = time.time()

  def progress(done, total, image_bytes):
    print(
      f"\r  {done:,}/{total:,} records converted, {_mb(image_bytes)} of images",
      end="\n" if done == total else "",
      flush=True,
    )

  print(f"reading {len(_INPUT.value)} file(s) as {_KIND.value} records: {', '.join(_INPUT.value)}")
  try:
    s = tfds_source.prepare(
      _INPUT.value,
      kind=_KIND.value,
      name=_NAME.value,
      data_dir=_DATA_DIR.value,
      split=_SPLIT.value,
      skip_bad=_SKIP_BAD.value,
      overwrite=_OVERWRITE.value,
      progress=progress,
    )
  except (readers.RecordError, tfds_source.TfdsError, FileExistsError, ValueError) as e:
    hint = " (--skip_bad skips and counts bad records)" if isinstance(e, readers.RecordError) else ""
    print(f"error: {e}{hint}", file=sys.stderr)
    return 1
  print(
    f"wrote {s['records']:,} {s['kind']} records ({s['images']:,} images, "
    f"{_mb(s['image_bytes'])}) as split {s['split']!r}: {_mb(s['bytes'])} in {s['path']} in "
    f"{time.time() - start:.1f} s" + (f"; skipped {s['skipped']:,} bad records" if s["skipped"] else "")
  )
  flags_ = (
    f"--config.data.source=tfds --config.data.tfds_name={_NAME.value} "
    f"--config.data.tfds_dir={_DATA_DIR.value}"
    + (f" --config.data.tfds_split={_SPLIT.value}" if _SPLIT.value != "train" else "")
  )
  binary = "launch.sft" if s["kind"] == "sft" else "launch.rl"
  print(f"next: {shell.python_m(binary, '--config=CONFIG', '--workdir=WORKDIR', flags_)}")
  return 0


if __name__ == "__main__":
  errors.run(main)
