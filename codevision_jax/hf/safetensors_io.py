"""Streaming safetensors reading and writing, one tensor at a time.

The format: an 8-byte little-endian header length, a JSON header mapping each name to its dtype,
shape and byte range, then the raw little-endian data. We read a tensor with a positioned read
(not mmap, whose touched pages count as resident memory) and write tensors one after another, so
neither direction ever holds more than one tensor on the host.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
  """Random access to the tensors of one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
          raise ValueError("file is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
          raise ValueError(f"header length {n} is implausible")
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a valid safetensors file ({e})") from None
    self.metadata = header.pop("__metadata__", {}) or {}
    self.entries = header
    self._data_start = 8 + n
    self.bytes_read = 0  # tensor bytes read so far

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def _entry(self, name: str) -> tuple[np.dtype, int, tuple[int, ...]]:
    """(dtype, absolute offset of the data, shape) of a tensor, its byte range checked."""
    entry = self.entries[name]
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected:
      raise ValueError(
        f"{self.path}: tensor {name!r} spans {end - begin} bytes, shape {shape} of {entry['dtype']} needs {expected}"
      )
    return dtype, self._data_start + begin, shape

  def _pread(self, fd: int, view: memoryview, pos: int, name: str) -> None:
    done = 0
    while done < len(view):
      got = os.preadv(fd, [view[done:]], pos + done)
      if got <= 0:
        raise ValueError(f"{self.path}: file ends inside tensor {name!r}")
      done += got
    self.bytes_read += len(view)

  def read(self, name: str) -> np.ndarray:
    dtype, pos, shape = self._entry(name)
    buf = bytearray(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    with open(self.path, "rb", buffering=0) as f:
      self._pread(f.fileno(), memoryview(buf), pos, name)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)

  def read_box(self, name: str, rows: tuple[int, int], cols: tuple[int, int] | None = None) -> np.ndarray:
    """Rows [r0, r1) and columns [c0, c1) (default: all) of a tensor's 2-D view
    [shape[0], -1], reading only those bytes: one read for whole rows, else one per row."""
    dtype, pos, shape = self._entry(name)
    width = int(np.prod(shape[1:], dtype=np.int64))
    (r0, r1), (c0, c1) = rows, cols or (0, width)
    if not (0 <= r0 <= r1 <= (shape[0] if shape else 1) and 0 <= c0 <= c1 <= width):
      raise ValueError(f"{self.path}: rows {rows} / columns {cols} are outside tensor {name!r} of shape {shape}")
    out = np.empty((r1 - r0, c1 - c0), dtype)
    raw = out.view(np.uint8)  # (bfloat16 has no buffer protocol of its own)
    with open(self.path, "rb", buffering=0) as f:
      if c1 - c0 == width:
        self._pread(f.fileno(), memoryview(raw).cast("B"), pos + r0 * width * dtype.itemsize, name)
      else:
        for i in range(r1 - r0):
          self._pread(f.fileno(), memoryview(raw[i]), pos + ((r0 + i) * width + c0) * dtype.itemsize, name)
    return out


def write_file(
  path: str,
  specs: list[tuple[str, tuple[int, ...], np.dtype]],
  produce: Callable[[str], np.ndarray],
  metadata: dict | None = None,
) -> None:
  """Writes tensors named in `specs` (name, shape, dtype), asking `produce(name)` for each in turn."""
  header, offset = {}, 0
  for name, shape, dtype in specs:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header["__metadata__"] = metadata or {"format": "pt"}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in specs:
      array = np.ascontiguousarray(produce(name), dtype=dtype)
      if array.shape != tuple(shape):
        raise ValueError(f"tensor {name!r} has shape {array.shape}, planned {tuple(shape)}")
      f.write(array.reshape(-1).view(np.uint8).data)
    f.flush()
    os.fsync(f.fileno())


def parse_size(size: int | str) -> int:
  """'5GB' -> 5e9 bytes (HF's convention: GB = 10^9, GiB = 2^30)."""
  if isinstance(size, int):
    return size
  s = size.strip().upper()
  for suffix, mult in (
    ("GIB", 2**30),
    ("MIB", 2**20),
    ("KIB", 2**10),
    ("GB", 10**9),
    ("MB", 10**6),
    ("KB", 10**3),
    ("B", 1),
  ):
    if s.endswith(suffix):
      return int(float(s[: -len(suffix)]) * mult)
  return int(s)


def plan_shards(sizes: Iterable[tuple[str, int]], max_bytes: int) -> list[list[str]]:
  """Greedy split of tensors (in order) into shards of at most `max_bytes` (a bigger tensor
  gets a shard of its own)."""
  shards: list[list[str]] = [[]]
  current = 0
  for name, nbytes in sizes:
    if shards[-1] and current + nbytes > max_bytes:
      shards.append([])
      current = 0
    shards[-1].append(name)
    current += nbytes
  return shards
