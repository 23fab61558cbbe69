"""glibc's malloc settings for CPU runs (`runtime.host_malloc`): how they join an environment, and
that `make demo` and the README's command use the same ones."""

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
