"""Framing between the server, the workers and the per-call children.

A frame is: 4-byte big-endian length of a UTF-8 JSON header, the header, then the binary blobs
whose lengths the header lists under "blobs". JSON only (never pickle): each side treats what it
reads from the less trusted side as data.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

_LEN = struct.Struct(">I")
MAX_HEADER = 16 << 20


def _fallback(obj: Any) -> str:
  return repr(obj)[:200]


def encode(header: dict[str, Any], blobs: list[bytes] = ()) -> bytes:
  """One frame holding `header` (with the blob lengths added) and `blobs`.

  Values JSON cannot hold (e.g. numpy scalars in a trace) are written as their short repr.
  """
  header = dict(header, blobs=[len(b) for b in blobs])
  raw = json.dumps(header, separators=(",", ":"), default=_fallback).encode()
  return b"".join([_LEN.pack(len(raw)), raw, *blobs])


def write_frame(fd: int, header: dict[str, Any], blobs: list[bytes] = ()) -> None:
  """Writes a whole frame to a blocking file descriptor."""
  view = memoryview(encode(header, blobs))
  while view:
    n = os.write(fd, view)
    view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
  chunks, left = [], n
  while left:
    chunk = os.read(fd, min(left, 1 << 20))
    if not chunk:
      return None
    chunks.append(chunk)
    left -= len(chunk)
  return b"".join(chunks)


def read_frame(fd: int) -> tuple[dict[str, Any], list[bytes]] | None:
  """Reads one frame from a blocking fd; None at end of file."""
  raw = _read_exact(fd, _LEN.size)
  if raw is None:
    return None
  (n,) = _LEN.unpack(raw)
  if n > MAX_HEADER:
    raise ValueError(f"frame header of {n} bytes exceeds {MAX_HEADER}")
  header = json.loads(_read_exact(fd, n) or b"null")
  blobs = []
  for size in header.get("blobs", []):
    blob = _read_exact(fd, int(size))
    if blob is None:
      raise EOFError("truncated frame")
    blobs.append(blob)
  return header, blobs


def decode(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
  """Parses one complete frame held in memory; raises ValueError if it is malformed."""
  if len(data) < _LEN.size:
    raise ValueError("empty frame")
  (n,) = _LEN.unpack_from(data)
  if n > MAX_HEADER or _LEN.size + n > len(data):
    raise ValueError("bad frame header length")
  header = json.loads(data[_LEN.size : _LEN.size + n])
  if not isinstance(header, dict):
    raise ValueError("frame header is not an object")
  blobs, pos = [], _LEN.size + n
  for size in header.get("blobs", []):
    size = int(size)
    if size < 0 or pos + size > len(data):
      raise ValueError("truncated frame")
    blobs.append(data[pos : pos + size])
    pos += size
  return header, blobs
