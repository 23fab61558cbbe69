"""Record sizes cached per data file, so that a restart or another host does not size the data
set again.

    sizes = record_sizes(source, tokenizer, settings, cache_dir=cache_dir(cfg.data, workdir),
                         skip_bad=False, workers=4)   # [N, 3]: tokens, patches, images

A data file's entry, `<cache_dir>/sizes-<key>.npz`, holds the sizes of the records read from it
and which records have an image that cannot be used (with the reason, so that `skip_bad` counts
and the error for such a record are the same on a cached start). The key (`file_key`) is the
file's fingerprint (size, mtime_ns and a SHA-256 of its first and last MiB: constant time on a
file of any size; any write changes the mtime), which of its records were read, the tokenizer's
fingerprint (its full serialisation), the image settings that change sizes, and a hash of the
code that computes sizes (chat rendering, image sizing). Images referenced by path are not part
of the key: replace one in place and delete the cache (or pass data.size_cache=off).

Entries are written to a temporary file and renamed, so readers never see a torn one; an entry
that cannot be read is ignored with a warning and written again. Records that come from no file
(synthetic data, generated in memory on every start) are sized without a cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import tempfile

import numpy as np

from codevision_jax.data import encode, sizing
from codevision_jax.processing import chat, code_tool, image as image_lib
from codevision_jax.runtime import layout

log = logging.getLogger(__name__)

VERSION = 1
"""Bumped when the entries' layout changes."""

_EDGE = 1 << 20  # Bytes hashed at each end of a data file.

MIN_RECORDS_PER_WORKER = 1000
"""Fewer records than this per worker are sized in fewer workers (a worker costs about a second
to start: it imports the tokenizer's library)."""


def cache_dir(data_cfg, workdir: str) -> str | None:
  """`data.size_cache`: "" is `<workdir>/size_cache`, "off" no cache, anything else the folder."""
  value = data_cfg.get("size_cache", "")
  if value == "off":
    return None
  return value or layout.size_cache(workdir)


# ---- keys -----------------------------------------------------------------------------------


def file_fingerprint(path: str) -> dict:
  """Size, mtime_ns and the SHA-256 of the first and last MiB of a file."""
  st = os.stat(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    digest.update(f.read(_EDGE))
    if st.st_size > _EDGE:
      f.seek(max(_EDGE, st.st_size - _EDGE))
      digest.update(f.read(_EDGE))
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "edges_sha256": digest.hexdigest()}


def tokenizer_fingerprint(tokenizer) -> str:
  """SHA-256 of the tokenizer's class and full serialisation (vocabulary, merges, added and
  special tokens, normaliser); a tokenizer without one (slow) hashes its vocabulary instead."""
  digest = hashlib.sha256(type(tokenizer).__name__.encode())
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:
    digest.update(backend.to_str().encode())
  else:
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
  digest.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
  return digest.hexdigest()


def code_fingerprint() -> str:
  """SHA-256 of the modules whose code decides a record's size."""
  digest = hashlib.sha256()
  for module in (encode, chat, code_tool, image_lib):
    with open(inspect.getfile(module), "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def context_key(tokenizer, settings: image_lib.ImageSettings) -> dict:
  """What, besides the data file, decides the sizes: tokenizer, image settings, code."""
  return {
    "version": VERSION,
    "tokenizer": tokenizer_fingerprint(tokenizer),
    "image": {
      k: getattr(settings, k) for k in ("min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size")
    },
    "code": code_fingerprint(),
  }


def file_key(path: str, indices: list[str], context: dict) -> str:
  """The entry's key: the file's fingerprint, the indices of the records read from it (a read
  with skip_bad may skip some) and the context."""
  records = hashlib.sha256("\n".join(indices).encode()).hexdigest()
  return json.dumps({"file": file_fingerprint(path), "records": [len(indices), records], **context}, sort_keys=True)


def entry_path(directory: str, key: str) -> str:
  return os.path.join(directory, f"sizes-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz")


# ---- entries ----------------------------------------------------------------------------------


def load(path: str, key: str, n: int) -> sizing.Measured | None:
  """The entry at `path` if it holds `key` and n records; None when absent; a warning and None
  when it cannot be read (it is then written again)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      if str(z["key"]) != key:
        raise ValueError("it holds another key")
      sizes, bad_index, bad_why = z["sizes"], z["bad_index"], z["bad_why"]
    if sizes.shape != (n, 3) or bad_index.shape != bad_why.shape:
      raise ValueError(f"sizes of shape {sizes.shape}, expected ({n}, 3)")
  except Exception as e:  # A torn or foreign file: any error means "rebuild".
    log.warning("ignoring the size cache entry %s (%s: %s); sizing the file again", path, type(e).__name__, e)
    return None
  return sizing.Measured(0, sizes.astype(np.int64), {int(i): str(w) for i, w in zip(bad_index, bad_why)})


def save(path: str, key: str, measured: sizing.Measured) -> None:
  """Writes the entry to a temporary file in the same folder, then renames it into place."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  bad = sorted(measured.bad.items())
  fd, tmp = tempfile.mkstemp(prefix=".sizes-", suffix=".tmp", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(
        f,
        key=np.asarray(key),
        sizes=measured.sizes,
        bad_index=np.asarray([i for i, _ in bad], np.int64),
        bad_why=np.asarray([w for _, w in bad], dtype=str),
      )
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


# ---- the records' files -------------------------------------------------------------------------


def file_spans(records) -> list[tuple[str | None, int, int, list[str]]]:
  """(data file or None, start, stop, the records' indices in the file) of each run of records
  read from one file, in order (`Conversation.origin` is "<file>:<index>"). A source with an
  `origins()` method gives them without its records being read (a TFDS set)."""
  spans, current, is_file = [], None, {}
  origins = (
    records.origins()
    if hasattr(records, "origins")
    else (getattr(records[i], "origin", "") for i in range(len(records)))
  )
  for i, origin in enumerate(origins):
    path, _, index = (origin or "").rpartition(":")
    if path not in is_file:
      is_file[path] = bool(path) and os.path.isfile(path)
    path = path if is_file[path] and index.isdigit() else None
    if current is None or current[0] != path:
      current = [path, i, i + 1, []]
      spans.append(current)
    current[2] = i + 1
    current[3].append(index)
  return [tuple(s) for s in spans]


def _workers(n: int, workers: int) -> int:
  return max(0, min(workers, n // MIN_RECORDS_PER_WORKER))


def _sized(records, spans, tokenizer, settings, *, directory, write, skip_bad, workers):
  """`sizing.Measured` per span: read from its entry, or measured (and written when `write`);
  raises at the first bad record unless `skip_bad`."""
  context = None  # The tokenizer's and settings' key: computed when a span has a file.
  parts = []
  for path, start, stop, indices in spans:
    part = key = entry = None
    if directory and path:
      context = context or context_key(tokenizer, settings)
      key = file_key(path, indices, context)
      entry = entry_path(directory, key)
      part = load(entry, key, stop - start)
      if part is not None:
        log.info("sizes of %d records of %s read from %s", stop - start, path, entry)
        part.start = start
    if part is None:
      part = sizing.measure(
        records,
        tokenizer,
        settings,
        start=start,
        stop=stop,
        workers=_workers(stop - start, workers),
        stop_at_bad=not skip_bad,
        label=os.path.basename(path) if path else "records",
      )
      if write and entry and part.complete:
        save(entry, key, part)
        log.info("sizes of %d records of %s written to %s", stop - start, path, entry)
    parts.append(part)
    if part.bad and not skip_bad:
      sizing.finish(parts, records, skip_bad=False)  # Raises for the first bad record.
  return parts


def record_sizes(
  records,
  tokenizer,
  settings: image_lib.ImageSettings,
  *,
  cache_dir: str | None,
  skip_bad: bool = False,
  workers: int = 0,
  process_index: int = 0,
  barrier=None,
) -> np.ndarray:
  """`sizing.record_sizes` (the same result, errors and skip_bad counts), read from or written to
  `cache_dir` per data file (None: no cache), sized in up to `workers` processes. Of several
  processes (`barrier` waits for all), process 0 sizes and writes first; the others then read
  its entries (or, on a folder they do not share, size the files themselves)."""
  spans = file_spans(records)
  kwargs = dict(directory=cache_dir, skip_bad=skip_bad, workers=workers)
  if cache_dir is None or barrier is None:
    parts = _sized(records, spans, tokenizer, settings, write=process_index == 0, **kwargs)
  elif process_index == 0:
    try:
      parts = _sized(records, spans, tokenizer, settings, write=True, **kwargs)
    finally:
      barrier()  # Also when sizing failed: the others then fail the same way.
  else:
    barrier()
    parts = _sized(records, spans, tokenizer, settings, write=False, **kwargs)
  return sizing.finish(parts, records, skip_bad=skip_bad)
