"""The benchmark file and its rows: finding the published file, reading a JSON/JSONL/TSV/Parquet
table a few rows at a time, and `read`, the loop every reader shares that turns rows into items
(with a decodable image) or bad items."""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import os
import sys
from typing import Callable

from evals.suites.images import check_image
from evals.suites.items import BadItem, EvalItem


def resolve_file(suite: str, path: str, exts: tuple, patterns: tuple, expected: str) -> str:
  """The benchmark file to read: `path` itself (with a published extension) or the first of
  `patterns` found under the directory `path` -> absolute path."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory; {suite} reads {expected}")
  path = os.path.abspath(path)
  if os.path.isdir(path):
    for pattern in patterns:
      found = sorted(glob.glob(os.path.join(path, "**", pattern), recursive=True))
      if len(found) == 1:
        return found[0]
      if found:
        raise ValueError(
          f"{path}: several files match {pattern!r} ({', '.join(found[:4])}); pass the one {suite} should read"
        )
    raise FileNotFoundError(f"{path}: no {' or '.join(patterns)} in this directory; {suite} reads {expected}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in exts:
    raise ValueError(
      f"{path}: {suite} reads {expected}, not a {ext or 'extension-less'} file; "
      f"pass that file (or the directory holding it)"
    )
  return path


def check_columns(path: str, names, required: tuple, expected: str) -> None:
  """Raises when a table lacks a column every row needs (then no row could be read)."""
  absent = [c for c in required if c not in names]
  if absent:
    raise ValueError(f"{path}: no column(s) {absent} (it has {list(names)[:12]}); expected {expected}")


@contextlib.contextmanager
def _large_csv_fields():
  """Lets csv read fields of any size (base64 8K images), restoring the limit afterwards."""
  old, limit = csv.field_size_limit(), sys.maxsize
  while True:
    try:
      csv.field_size_limit(limit)
      break
    except OverflowError:  # A C long is 32 bits on some platforms.
      limit //= 2
  try:
    yield
  finally:
    csv.field_size_limit(old)


def tsv_rows(path: str, required: tuple, expected: str):
  """Yields (row, {column: text}) of a tab-separated file with a header row (VLMEvalKit's TSVs,
  written by pandas); blank lines are skipped."""
  with _large_csv_fields(), open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if not header:
      raise ValueError(f"{path}: empty file; expected {expected}")
    check_columns(path, header, required, expected)
    row = 0
    for values in reader:
      if values:
        yield row, dict(zip(header, values))
        row += 1


def parquet_rows(path: str, required: tuple, expected: str):
  """Yields (row, dict) of a Parquet file, a few rows in memory at a time."""
  import pyarrow.parquet as pq  # Imported lazily: only Parquet suites need it.

  parquet = pq.ParquetFile(path)
  check_columns(path, parquet.schema_arrow.names, required, expected)
  row = 0
  for batch in parquet.iter_batches(batch_size=16):
    for raw in batch.to_pylist():
      yield row, raw
      row += 1


def table_rows(path: str, required: tuple, expected: str):
  """Rows of a .tsv or .parquet table."""
  if path.lower().endswith(".tsv"):
    return tsv_rows(path, required, expected)
  return parquet_rows(path, required, expected)


def _file_errors():
  """Exceptions that mean the file as a whole is not in the expected format."""
  errors = [json.JSONDecodeError, csv.Error, UnicodeDecodeError]
  try:
    import pyarrow

    errors.append(pyarrow.ArrowException)
  except ImportError:
    pass
  return tuple(errors)


def _unique_ids(items: list[EvalItem]) -> list[EvalItem]:
  """Makes repeated ids unique by appending "@<row>" to the later ones."""
  seen = set()
  for item in items:
    if item.id in seen:
      item.id = f"{item.id}@{item.source.rsplit(':', 1)[1]}"
    seen.add(item.id)
  return items


def read(suite: str, path: str, rows, to_item: Callable, limit: int, expected: str):
  """Turns each (row, raw) of `rows` into an item with a decodable image, or a BadItem."""
  items, bad = [], []
  rows = iter(rows)
  try:
    for row, raw in itertools.islice(rows, limit if limit > 0 else None):
      try:
        if isinstance(raw, Exception):
          raise raw
        item = to_item(raw, row)
        check_image(item.image)
      except (ValueError, TypeError, KeyError) as e:
        bad.append(BadItem(suite=suite, file=path, row=row, reason=str(e) or type(e).__name__))
        continue
      items.append(item)
  except _file_errors() as e:
    raise ValueError(f"{path}: cannot be read as {expected} ({type(e).__name__}: {e})") from None
  finally:
    if hasattr(rows, "close"):
      rows.close()
  return _unique_ids(items), bad
