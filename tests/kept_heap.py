"""The test processes' heap: XLA's buffers kept in it for the length of a test file.

`runtime.host_malloc.TUNABLES` keep glibc from mapping and faulting in XLA's buffers afresh at
every step, but they act only from a process's start, and a pytest worker runs hundreds of tests
of other shapes: a heap that never gives memory back would keep the holes between them all. So
the workers apply the same settings through `mallopt` for one test file at a time (`kept`), and
at its end give the settings back and return the file's free memory to the kernel.

    one_arena()      # At import, before JAX starts its threads: they all share the main arena.
    with kept():     # mmap off and no trimming; on leaving, glibc's defaults and malloc_trim.
      ...

Between files the worker runs under glibc's default values, save one: once `mallopt` has set a
threshold, glibc no longer raises its mmap threshold by itself as large buffers are freed.
Elsewhere than glibc both do nothing.
"""

import contextlib
import ctypes
import gc
import platform

# mallopt's parameters (glibc's malloc.h) and glibc's defaults for the two that `kept` changes.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int.

_libc = ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None
_depth = 0


def one_arena() -> None:
  """Every thread started after this allocates from the main arena (`glibc.malloc.arena_max=1`):
  a large buffer then never falls outside the heap that `kept` holds on to."""
  if _libc is not None:
    _libc.mallopt(M_ARENA_MAX, 1)


@contextlib.contextmanager
def kept():
  """Within: no allocation is mapped on its own and free memory stays in the heap. On leaving the
  outermost `kept`: glibc's defaults again, and the free memory goes back to the kernel."""
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
