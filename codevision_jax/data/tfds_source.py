"""TFDS data sets of conversation records: prepared once from record files, then read on every
host through TFDS's ArrayRecord data source (random access by index, no TensorFlow).

    summary = prepare(["sft.jsonl"], kind="sft", name="codevision_sft", data_dir="/data/tfds")
    source = TfdsSource("codevision_sft", "/data/tfds")   # len(source); source[i] -> Conversation

`python -m launch.prepare_tfds` runs `prepare`; `data.source="tfds"` reads with `TfdsSource`. A
prepared set lives in `<data_dir>/<name>/1.0.0/`: the `<name>-<split>.array_record-*` shards,
TFDS's `dataset_info.json` and `features.json`, and `metadata.json` (our `kind` and input files).
One example per record:

* `record`: the normalised `Conversation` (what `readers` made of the row) as JSON, all fields
  but the images: messages, tools, ground truth, reward metadata, `extra`, `origin`;
* `images`: the encoded bytes (PNG/JPEG, as stored; a path's file read whole) of its images, in
  placeholder order.

Images are a sequence of bytes `Tensor`s, not TFDS's `Image` feature (which needs TensorFlow to
encode). Examples are written in the order of the input files and their rows (no TFDS shuffle),
so index i is the i-th record the `files` source would hold: the same plan, the same batches.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re

import numpy as np

from codevision_jax.data import readers, records as records_lib

log = logging.getLogger(__name__)

VERSION = "1.0.0"
DEFAULT_SPLIT = "train"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_FIELDS = (
  "messages",
  "tools",
  "ground_truth",
  "required_transforms",
  "target_box",
  "question",
  "answer",
  "data_source",
  "extra",
  "origin",
)


class TfdsError(ValueError):
  """A prepared data set that cannot be found or used; says what to run or change."""


def check_name(name: str) -> str:
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise TfdsError(
      f"data set name {name!r} must be snake_case (lowercase letters, digits and "
      "underscores, starting with a letter), e.g. codevision_sft"
    )
  return name


def dataset_dir(name: str, data_dir: str) -> str:
  """Where `prepare` writes the set `name` under `data_dir`."""
  return os.path.join(data_dir, check_name(name), VERSION)


# ---- records <-> examples ------------------------------------------------------------------------


def _image_bytes(image, k: int) -> bytes:
  """The encoded bytes of image `k` (a path's file as is; a PIL image as PNG); checks the header."""
  from PIL import Image, UnidentifiedImageError

  if isinstance(image, Image.Image):
    data = records_lib.png_bytes(image)
  elif isinstance(image, (bytes, bytearray)):
    data = bytes(image)
  elif isinstance(image, (str, os.PathLike)):
    try:
      with open(image, "rb") as f:
        data = f.read()
    except OSError as e:
      raise ValueError(f"image {k}: cannot read {image!r} ({e.strerror})") from None
  else:
    raise ValueError(f"image {k}: expected a path or bytes, got {type(image).__name__}")
  try:
    Image.open(io.BytesIO(data))  # Reads the header only: the format and the size.
  except Exception as e:  # PIL raises several types for data that is not an image.
    unknown = isinstance(e, UnidentifiedImageError)
    reason = "unknown format" if unknown else f"{type(e).__name__}: {e}"
    raise ValueError(f"image {k}: not an image PIL can open ({reason})") from None
  return data


def to_example(conv: records_lib.Conversation) -> dict:
  """A conversation -> the example's features {"record": JSON text, "images": [bytes]}."""
  fields = {k: getattr(conv, k) for k in _FIELDS}
  try:
    record = json.dumps(fields)  # ASCII: any text (lone surrogates too) survives UTF-8.
  except (TypeError, ValueError) as e:
    raise ValueError(f"a field cannot be stored as JSON ({e})") from None
  return {"record": record, "images": [_image_bytes(im, k) for k, im in enumerate(conv.images)]}


def from_example(example: dict) -> records_lib.Conversation:
  """An example read back (as the data source returns it) -> the conversation."""
  record = example["record"]
  fields = json.loads(record.decode("utf-8") if isinstance(record, bytes) else record)
  images = [bytes(im) for im in example["images"]]
  return records_lib.Conversation(images=images, **{k: fields.get(k) for k in _FIELDS if k in fields})


# ---- preparing -----------------------------------------------------------------------------------


def _origin_parts(origin: str) -> tuple[str, int | str]:
  path, _, index = origin.rpartition(":")
  return path, int(index) if index.isdigit() else index


def _builder(name: str, split: str, kind: str, paths: list, examples):
  """A `GeneratorBasedBuilder` named `name` writing `examples` (an iterable of features) to one
  split; not registered (any name, any number of times in one process)."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import registered

  with registered.skip_registration():

    class _Builder(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version(VERSION)

      def _info(self):
        return tfds.core.DatasetInfo(
          builder=self,
          disable_shuffling=True,  # Keep the files' order: index i is record i.
          description=f"codevision-jax {kind} conversation records (docs/data.md)",
          metadata=tfds.core.MetadataDict(kind=kind, files=list(paths)),
          features=tfds.features.FeaturesDict(
            {
              "record": tfds.features.Text(),
              "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            }
          ),
        )

      def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples()}

      def _generate_examples(self):
        yield from enumerate(examples)

      def _log_download_bytes(self):  # TFDS prints "Downloading and preparing ..."; we report.
        pass

      def _log_download_done(self):
        pass

    # A one-part module name: TFDS then looks for no code files (checksums) beside the builder.
    return type(name, (_Builder,), {"name": name, "__module__": "codevision_jax_tfds"})


def prepare(
  paths,
  *,
  kind: str,
  name: str,
  data_dir: str,
  split: str = DEFAULT_SPLIT,
  skip_bad: bool = False,
  overwrite: bool = False,
  progress=None,
) -> dict:
  """Reads the record files `paths` (as `data.source="files"` does, `kind` "sft" or "rl") and
  writes them as the TFDS set `name` (split `split`) under `data_dir`, in ArrayRecord files.

  A bad record raises `readers.RecordError` (file and row) unless `skip_bad`, which skips and
  counts it. `progress(done, total, image_bytes)`, if given, is called every 256 records and at
  the end. Returns a summary: records, skipped, images, image_bytes, bytes (on disk), path.
  """
  import tensorflow_datasets as tfds

  if kind not in ("sft", "rl"):
    raise ValueError(f"kind must be 'sft' or 'rl', got {kind!r}")
  paths = [paths] if isinstance(paths, str) else list(paths)
  if not paths:
    raise ValueError("no input files")
  out_dir = dataset_dir(name, data_dir)
  if os.path.exists(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir} already exists: remove it, choose another name, or overwrite it (--overwrite)")
    import shutil

    shutil.rmtree(out_dir)
  convs, skipped = [], 0
  for path in paths:
    stats = {}
    convs += readers.read_records(path, skip_bad=skip_bad, require_assistant=kind == "sft", stats=stats)
    skipped += stats.get("skipped", 0)
  if not convs:
    raise ValueError(f"0 usable records in {', '.join(paths)}" + (f" ({skipped} skipped as bad)" if skipped else ""))
  counts = {"records": 0, "images": 0, "image_bytes": 0}

  def examples():
    nonlocal skipped
    for i, conv in enumerate(convs):
      try:
        example = to_example(conv)
      except ValueError as e:
        err = readers.RecordError(*_origin_parts(conv.origin), str(e))
        if not skip_bad:
          raise err from None
        log.warning("skipping bad record: %s", err)
        skipped += 1
        continue
      counts["records"] += 1
      counts["images"] += len(example["images"])
      counts["image_bytes"] += sum(len(b) for b in example["images"])
      yield example
      if progress and (i + 1) % 256 == 0:
        progress(i + 1, len(convs), counts["image_bytes"])

  tfds.disable_progress_bar()
  builder = _builder(name, split, kind, paths, examples())(data_dir=data_dir, file_format="array_record")
  import tempfile

  with tempfile.TemporaryDirectory() as tmp:  # TFDS makes a download folder; nothing downloads.
    builder.download_and_prepare(download_dir=tmp)
  if progress:
    progress(len(convs), len(convs), counts["image_bytes"])
  size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
  return dict(counts, skipped=skipped, bytes=size, path=out_dir, split=split, kind=kind)


# ---- reading -------------------------------------------------------------------------------------


class TfdsSource:
  """The conversations of a prepared set's split, read on access: a Grain random-access source
  (`len`, `[i]`) and picklable (Grain workers reopen the files)."""

  def __init__(self, name: str, data_dir: str, split: str = DEFAULT_SPLIT, *, kind: str | None = None):
    if not data_dir:
      raise TfdsError("no data directory given")
    path = dataset_dir(name, data_dir)
    if "://" not in data_dir and not os.path.isfile(os.path.join(path, "dataset_info.json")):
      found = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else None
      raise TfdsError(
        f"no prepared data set {name!r} in {data_dir!r} (no {path}/dataset_info.json; "
        + (
          f"the directory holds: {', '.join(found[:10]) or 'nothing'}"
          if found is not None
          else "the directory does not exist"
        )
        + "); prepare it with python -m launch.prepare_tfds --input=FILE --kind=sft|rl "
        f"--name={name} --data_dir={data_dir}"
      )
    self.name, self.data_dir, self.split, self.path = name, data_dir, split, path
    import tensorflow_datasets as tfds

    info = tfds.builder_from_directory(path).info
    if split not in info.splits:
      raise TfdsError(
        f"data set {name!r} in {data_dir!r} has no split {split!r}; its splits: {', '.join(info.splits.keys())}"
      )
    self.kind = (info.metadata or {}).get("kind")
    if kind == "sft" and self.kind == "rl":
      raise TfdsError(
        f"data set {name!r} in {data_dir!r} was prepared with --kind=rl (prompts "
        "without assistant turns); SFT trains on a set prepared with --kind=sft"
      )
    self._len = info.splits[split].num_examples
    self._source = None

  def _data_source(self):
    if self._source is None:
      import tensorflow_datasets as tfds

      self._source = tfds.builder_from_directory(self.path).as_data_source(split=self.split)
    return self._source

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    index = int(index)
    if not -self._len <= index < self._len:
      raise IndexError(f"record {index} of {self._len}")
    index %= self._len
    conv = from_example(self._data_source()[index])
    conv.origin = f"tfds {self.name}/{self.split}[{index}]" + (f" from {conv.origin}" if conv.origin else "")
    return conv

  def origins(self) -> list[str]:
    """Each record's origin as `__getitem__` names it, without reading the set: for the size
    cache, which keys data files (a TFDS set is sized at each start)."""
    return [f"tfds {self.name}/{self.split}[{i}]" for i in range(self._len)]

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_source"} | {"_source": None}

  def __repr__(self):
    return f"TfdsSource({self.name}/{self.split} in {self.data_dir}: {self._len} conversations)"
