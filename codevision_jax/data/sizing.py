"""The sizing pass: tokens, patches and images of every record (`encode.record_size`), in worker
processes, with a progress line; the result is in record order whatever the number of workers.

    part = measure(source, tokenizer, settings, workers=8, label="train.jsonl")
    sizes = finish([part], source, skip_bad=False)   # [N, 3]; raises for a broken image

A record whose image cannot be used is kept in `Measured.bad` (its index and the reason), so that
`finish` raises for it naming the record, or with `skip_bad` counts it and gives it BAD_RECORD
tokens. `data.size_cache` stores `Measured` per data file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import sys
import time

import numpy as np

from codevision_jax.data import encode
from codevision_jax.processing import image as image_lib
from codevision_jax.durations import hms

log = logging.getLogger(__name__)

_USABLE = (encode.BadImage, image_lib.ImagePreprocessingError)

PROGRESS_MIN = 1000
"""Fewer records than this are sized without a progress line."""


@dataclasses.dataclass
class Measured:
  """The sizes of the records [start, start + len(sizes)) of a source."""

  start: int
  sizes: np.ndarray  # int64 [n, 3]: tokens, patches, images (zeros for a bad record)
  bad: dict  # local index -> why the record's image cannot be used (str)
  complete: bool = True  # False when `measure` stopped at a bad record (`stop_at_bad`)


def _size_one(conversation, tokenizer, settings):
  """(tokens, patches, images), or the reason (str) the record's image cannot be used."""
  try:
    return encode.record_size(conversation, tokenizer, settings)
  except _USABLE as e:
    return str(e)


_WORKER = {}  # The tokenizer and image settings of a worker process (`_init_worker`).


def _init_worker(tokenizer, settings):
  _WORKER.update(tokenizer=tokenizer, settings=settings)


def _size_chunk(conversations):
  return [_size_one(c, _WORKER["tokenizer"], _WORKER["settings"]) for c in conversations]


class Progress:
  """`sizing train.jsonl: 51200/100000 records [######......] 3412 rec/s ETA 0:00:14` on stderr:
  redrawn in place on a terminal, else a line every tenth of the way; a last line when done."""

  def __init__(self, label: str, total: int, stream=None, width: int = 24):
    self.label, self.total, self.width = label, total, width
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.perf_counter()
    self.printed = 0  # Tenths of the way printed (not on a terminal).

  def line(self, done: int) -> str:
    elapsed = time.perf_counter() - self.t0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate else math.nan
    filled = int(self.width * done / max(self.total, 1))
    eta_s = hms(eta) if math.isfinite(eta) else "?"
    return (
      f"sizing {self.label}: {done}/{self.total} records [{'#' * filled}"
      f"{'.' * (self.width - filled)}] {rate:.0f} rec/s ETA {eta_s}"
    )

  def update(self, done: int):
    if self.tty:
      self.stream.write("\r" + self.line(done))
      self.stream.flush()
    elif self.total and done < self.total and 10 * done // self.total > self.printed:
      self.printed = 10 * done // self.total
      self.stream.write(self.line(done) + "\n")
      self.stream.flush()

  def close(self, done: int):
    elapsed = time.perf_counter() - self.t0
    self.stream.write(("\r" if self.tty else "") + self.line(done) + f" (done in {elapsed:.1f} s)\n")
    self.stream.flush()


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
  size = max(16, min(512, n // max(1, 8 * workers) or 1))
  return [(i, min(n, i + size)) for i in range(0, n, size)]


def _results(records, start, stop, tokenizer, settings, workers):
  """Yields (index, size or reason) for records [start, stop), in order."""
  if workers <= 0:
    for i in range(start, stop):
      yield i, _size_one(records[i], tokenizer, settings)
    return
  spans = collections.deque(_chunks(stop - start, workers))
  pool = concurrent.futures.ProcessPoolExecutor(
    workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(tokenizer, settings)
  )
  pending = collections.deque()
  try:
    while spans or pending:
      while spans and len(pending) < 4 * workers:  # Bounded: records are pickled as submitted.
        a, b = spans.popleft()
        chunk = [records[start + i] for i in range(a, b)]
        pending.append((start + a, pool.submit(_size_chunk, chunk)))
      first, future = pending.popleft()
      for k, result in enumerate(future.result()):
        yield first + k, result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def measure(
  records,
  tokenizer,
  settings: image_lib.ImageSettings,
  *,
  start: int = 0,
  stop: int | None = None,
  workers: int = 0,
  stop_at_bad: bool = False,
  label: str = "",
) -> Measured:
  """The sizes of records [start, stop) (`encode.record_size` each), in `workers` spawned
  processes (0: this one), with a `Progress` line labelled `label` when it is given (and there
  are PROGRESS_MIN records or more). `stop_at_bad` stops at the first record whose image cannot
  be used (the result is then not `complete`)."""
  stop = len(records) if stop is None else stop
  sizes, bad = np.zeros((stop - start, 3), np.int64), {}
  progress = Progress(label, stop - start) if label and stop - start >= PROGRESS_MIN else None
  done = 0
  with contextlib.closing(_results(records, start, stop, tokenizer, settings, workers)) as results:
    for i, result in results:
      done += 1
      if isinstance(result, str):
        bad[i - start] = result
        if stop_at_bad:
          return Measured(start, sizes[:done], bad, complete=False)
      else:
        sizes[i - start] = result
      if progress and done % 256 == 0:
        progress.update(done)
  if progress:
    progress.close(done)
  return Measured(start, sizes, bad)


def _where(records, index: int) -> str:
  return getattr(records[index], "origin", "") or f"record {index}"


def finish(parts: list[Measured], records, *, skip_bad: bool) -> np.ndarray:
  """[N, 3] int64 sizes of `records` from `parts` (covering them in order). A bad record raises
  ValueError naming it and the image, or with `skip_bad` is logged, counted and given BAD_RECORD
  tokens."""
  out = np.zeros((len(records), 3), np.int64)
  bad = []
  for part in parts:
    out[part.start : part.start + len(part.sizes)] = part.sizes
    for k, why in sorted(part.bad.items()):
      i = part.start + k
      if not skip_bad:
        raise ValueError(
          f"{_where(records, i)}: {why}. Fix or remove the record, or pass "
          "--config.data.skip_bad=True to skip such records"
        )
      bad.append(f"{_where(records, i)}: {why}")
      out[i] = (encode.BAD_RECORD, 0, 0)
  if bad:
    log.warning(
      "skipping %d of %d records with images that cannot be used (data.skip_bad), e.g. %s",
      len(bad),
      len(out),
      "; ".join(bad[:3]),
    )
  return out


def record_sizes(source, tokenizer, settings: image_lib.ImageSettings, *, skip_bad: bool = False) -> np.ndarray:
  """[N, 3] int64: tokens, patches and images of every record, from one pass in this process that
  reads image headers and checks that every image decodes (no preprocessing; `measure` with
  workers shows a progress line). A record with a broken image raises ValueError naming it (its
  origin, file:record) and the image, or, with `skip_bad`, is logged, counted and given
  `encode.BAD_RECORD` tokens. `data.size_cache.record_sizes` is the same, cached per data file."""
  return finish([measure(source, tokenizer, settings, stop_at_bad=not skip_bad)], source, skip_bad=skip_bad)
