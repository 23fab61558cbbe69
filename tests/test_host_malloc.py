"""glibc's malloc settings for CPU runs (`runtime.host_malloc`): how they join an environment, and
that `make demo` and the README's command use the same ones; the same settings through `mallopt`."""

import ast
import os
import re
import subprocess
import sys

from codevision_jax.runtime import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tunables_join_an_environment_without_replacing_malloc_settings_given():
  assert host_malloc.environ({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": host_malloc.TUNABLES}
  other = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
  assert host_malloc.environ(other)["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:" + host_malloc.TUNABLES
  mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
  assert host_malloc.environ(mine) == mine
  given = {"B": "2"}
  host_malloc.environ(given)
  assert given == {"B": "2"}  # A new mapping: the one given is left as it was.


def test_processes_the_tests_start_run_under_them():
  """tests/conftest.py sets them for every process a test starts (malloc settings of the
  developer's own environment win)."""
  tunables = os.environ["GLIBC_TUNABLES"]
  assert "glibc.malloc." in tunables
  out = subprocess.run(
    [sys.executable, "-c", "import os; print(os.environ['GLIBC_TUNABLES'])"], capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == tunables


def test_make_demo_and_the_readme_use_the_same_settings():
  with open(os.path.join(ROOT, "Makefile")) as f:
    makefile = f.read()
  value = re.search(r"^CPU_MALLOC := GLIBC_TUNABLES=(\S+)$", makefile, re.M).group(1)
  assert value == host_malloc.TUNABLES
  assert "$(CPU_MALLOC) $(PY) -m launch.demo" in makefile
  with open(os.path.join(ROOT, "README.md")) as f:
    assert re.findall(r"^GLIBC_TUNABLES=(\S+) ", f.read(), re.M) == [host_malloc.TUNABLES]


KEPT_HEAP_PROBE = """
import ctypes
from codevision_jax.runtime import host_malloc

class Mallinfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def one_large_buffer():
  # (mapped on its own, bytes of heap once it is freed); 64 MiB is above any mmap threshold
  # glibc sets itself (32 MiB at most).
  before = libc.mallinfo2().hblks
  p = libc.malloc(64 << 20)
  mapped = libc.mallinfo2().hblks - before
  libc.free(p)
  return mapped, libc.mallinfo2().arena

host_malloc.one_arena()
defaults = one_large_buffer()
with host_malloc.kept():
  kept = one_large_buffer()
print([defaults, kept, libc.mallinfo2().arena])
"""


def test_a_test_file_keeps_its_buffers_in_the_heap_and_gives_the_memory_back_at_its_end():
  """`one_arena` and `kept`, in a process of its own under glibc's defaults (this one is inside a
  test file's `kept`): a 64 MiB buffer is mapped on its own; within `kept` it comes from the heap
  and stays there once freed; leaving `kept` gives it back."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  probe = [sys.executable, "-c", KEPT_HEAP_PROBE]
  out = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  (mapped, _), (kept_mapped, kept_heap_bytes), heap_after = ast.literal_eval(out.stdout.strip())
  assert mapped == 1 and kept_mapped == 0
  assert kept_heap_bytes >= 64 << 20 > heap_after
