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

On GPUs and TPUs the device's memory holds the buffers and this changes little. Other C libraries
(musl) ignore the variable.
"""

from __future__ import annotations

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
