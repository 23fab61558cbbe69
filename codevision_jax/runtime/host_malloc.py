"""glibc's malloc settings for runs on CPU: XLA's step buffers stay in the heap between steps.

On CPU, XLA allocates an execution's buffers with malloc and frees them when it ends. With glibc's
defaults a large buffer (above the mmap threshold, at most 32 MiB, or too large for a thread's
arena) is a fresh `mmap`, freed with `munmap`, so every step faults its buffers in again page by
page, and the kernel zeroes each page: on the tiny recipes a third of the CPU time went to the
kernel. `TUNABLES` keep every allocation in one arena's heap (`arena_max=1`, `mmap_max=0`) and
never give its free memory back (`trim_threshold`), so a step reuses the pages of the last one.
The price is that a process keeps the memory of its largest step. `benchmarks/host_malloc.py`
measures both settings on the same run (docs/performance.md has the figures).

glibc reads `GLIBC_TUNABLES` when a process starts, so it is set in the environment of the
processes to start (`environ`; the test suite and `make demo` do), or on the command line
(`GLIBC_TUNABLES=<TUNABLES> python -m launch.sft ...`, as the README shows).

A process already running applies the same settings through `mallopt` for a stretch of its work
and gives the memory back after it: a pytest worker does, one test file at a time, since it runs
hundreds of tests of other shapes and a heap that never shrinks would keep the holes between them.

    one_arena()      # Before JAX starts its threads: they all share the main arena.
    with kept():     # mmap off and no trimming; on leaving, glibc's defaults and malloc_trim.
      ...

After the first `kept` the process runs under glibc's default values save one: once `mallopt`
has set a threshold, glibc no longer raises its mmap threshold itself as large buffers are freed.

On GPUs and TPUs the device's memory holds the buffers and this changes little. Other C libraries
(musl) ignore the variable, and there `one_arena` and `kept` do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
from typing import Mapping

TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def environ(env: Mapping[str, str]) -> dict[str, str]:
  """`env` with `TUNABLES` added to its GLIBC_TUNABLES; malloc tunables it sets already win."""
  out = dict(env)
  given = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
  if any(t.startswith("glibc.malloc.") for t in given):
    return out
  out["GLIBC_TUNABLES"] = ":".join(given + [TUNABLES])
  return out


# mallopt's parameters (glibc's malloc.h) and glibc's defaults for the two that `kept` changes.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int.

_libc = ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None
_depth = 0


def one_arena() -> None:
  """`arena_max=1` from now on: every thread started after this allocates from the main arena, so
  a large buffer never falls outside the heap that `kept` holds on to."""
  if _libc is not None:
    _libc.mallopt(M_ARENA_MAX, 1)


@contextlib.contextmanager
def kept():
  """`mmap_max=0` and no trimming within; on leaving the outermost `kept`, glibc's defaults again
  and the free memory goes back to the kernel."""
  global _depth
  if _libc is None:
    yield
    return
  if _depth == 0:
    _libc.mallopt(M_MMAP_MAX, 0)
    _libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
  _depth += 1
  try:
    yield
  finally:
    _depth -= 1
    if _depth == 0:
      _libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
      _libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
      gc.collect()  # Buffers held by reference cycles (modules, closures) are freed first.
      _libc.malloc_trim(0)
