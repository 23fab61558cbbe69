"""The commands a launcher prints for the user to run next, in forms that work in a fresh shell.

A fresh shell has not activated the project's virtual environment, so `python -m launch.view` fails
there (`No module named 'absl'`) and `tensorboard` is not on its PATH. The printed commands name
the interpreter that runs this launcher (`.venv/bin/python` when it lies under the current
directory, else its absolute path) and the tools beside it (`.venv/bin/tensorboard`).
"""

from __future__ import annotations

import os
import shlex
import sys


def _here(path: str) -> str:
  """`path` relative to the current directory when it lies under it (`.venv/bin/python`)."""
  rel = os.path.relpath(path)
  return rel if not rel.startswith("..") else path


def python() -> str:
  """The interpreter running this launcher, as the user types it."""
  exe = sys.executable or "python"
  return shlex.quote(_here(os.path.abspath(exe)) if os.path.isabs(exe) else exe)


def python_m(module: str, *args: str) -> str:
  """`.venv/bin/python -m module args...`."""
  return " ".join([python(), "-m", module, *args])


def tool(name: str) -> str:
  """A console script installed beside the interpreter (`.venv/bin/tensorboard`), or the bare
  name with a note when it is not installed there."""
  path = os.path.join(os.path.dirname(os.path.abspath(sys.executable or "")), name)
  if os.path.isfile(path):
    return shlex.quote(_here(path))
  return f"{name} (not installed beside {python()}: pip install {name})"
