"""How every launcher ends on a mistake: one message the user can act on, no traceback.

    if __name__ == "__main__":
      errors.run(main)              # instead of absl's app.run(main)

- An error the project's own code raises for the user (a ValueError, OSError or RuntimeError from
  a config check, the data, a resume check, the executor client, or any error class defined in
  this repository) prints as `<command>: error: <message>` on stderr and exits 1. `--verbose`,
  or the environment variable CVJ_TRACEBACK=1, prints the traceback as well. Errors raised inside
  a library, and bugs (TypeError, KeyError, ...), keep their traceback.
- A mistyped config field (`--config.train.stepz=3`) or config file is one line naming the flag,
  the field and the fields there are (with the closest ones), and exits 2.
- `--help` prints the command's flags and then its config's fields with their defaults (those of
  the `--config` given, else of the command's default config), and exits 0.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("codevision_jax", "launch", "evals", "executor", "configs")
HELP = ("--help", "-help", "-h", "--helpshort", "-?", "--helpfull")

_VERBOSE = flags.DEFINE_bool(
  "verbose", False, "On an error, print its traceback as well (so does the environment variable CVJ_TRACEBACK=1)."
)


def command() -> str:
  """`launch.sft` for `python -m launch.sft`."""
  path = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  if path.startswith(REPO + os.sep) and path.endswith(".py"):
    return os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return os.path.basename(path) or "error"


def tracebacks_wanted() -> bool:
  env = os.environ.get("CVJ_TRACEBACK", "").strip().lower()
  return env not in ("", "0", "false", "no", "off") or (flags.FLAGS.is_parsed() and _VERBOSE.value)


def _ours(path: str) -> bool:
  path = os.path.abspath(path)
  return (
    path.startswith(REPO + os.sep)
    and f"{os.sep}site-packages{os.sep}" not in path
    and os.path.relpath(path, REPO).split(os.sep)[0] in PACKAGES
  )


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is one the project raised for the user (see the module docstring)."""
  frames = traceback.extract_tb(error.__traceback__)
  if not frames or not _ours(frames[-1].filename):
    return False
  if type(error).__module__.split(".")[0] in PACKAGES:
    return True
  return isinstance(error, (ValueError, OSError, RuntimeError))


def report(error: BaseException) -> None:
  """Prints `error` as the launcher's one message."""
  sys.stdout.flush()
  text = str(error).strip() or type(error).__name__
  print(
    f"{command()}: error: {text}\n(the traceback: rerun with --verbose or CVJ_TRACEBACK=1)", file=sys.stderr, flush=True
  )
  if "codevision_jax.distributed_env" in sys.modules:  # Several processes: the others stop too.
    sys.modules["codevision_jax.distributed_env"].report_failure(text)


def _guarded(main):
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # noqa: BLE001 - reported and re-raised unless it is the user's.
      if tracebacks_wanted() or not is_user_error(e):
        raise
      report(e)
      sys.exit(1)

  return wrapped


# ---- flags: config fields, --help -----------------------------------------------------------------


def _config_flags() -> dict:
  """{flag name: the config it holds} of the command's config flags."""
  out = {}
  for name, flag in flags.FLAGS._flags().items():  # pylint: disable=protected-access
    value = flag.value if flag.present or flag.value is not None else flag.default
    if hasattr(value, "to_dict") and hasattr(value, "keys") and "." not in name:
      out[name] = value
  return out


def _load(path: str):
  from ml_collections import config_flags

  return config_flags.config_flags.ConfigFileFlagParser("config", lock_config=False).parse(path)


def _config_of(name: str, argv: list, fallback=None):
  """The config flag `name` would hold for `argv` (its overrides aside), or None."""
  for arg in argv:
    if arg.startswith(f"--{name}="):
      try:
        return _load(arg.split("=", 1)[1])
      except Exception:  # noqa: BLE001 - the parse itself reports a file that does not load.
        return None
  value = _config_flags().get(name)
  if value is not None:
    return value
  return _load(fallback) if fallback else None


def fields(config, prefix: str = "") -> list[tuple[str, object]]:
  """(dotted field, value) of every leaf of `config`."""
  out = []
  for key in sorted(config.keys()) if hasattr(config, "keys") else ():
    value = config[key]
    if hasattr(value, "keys") and hasattr(value, "to_dict"):
      out += fields(value, f"{prefix}{key}.")
    else:
      out.append((f"{prefix}{key}", value))
  return out


def _bad_override(argv: list, default_config: str | None) -> str | None:
  """The first `--config.a.b=...` of `argv` that names no field, described; else None."""
  names = set(_config_flags()) or {"config"}
  for arg in argv:
    if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
      continue
    name, *path = arg[2:].split("=", 1)[0].split(".")
    if name not in names:
      continue
    node = _config_of(name, argv, default_config)
    if node is None:
      return None
    for depth, key in enumerate(path):
      if hasattr(node, "keys") and key in node:
        node = node[key]
        continue
      here = ".".join(path[:depth])
      from codevision_jax.rl.rollouts import RENAMED  # Fields that moved, and where to.

      if ".".join(path) in RENAMED:
        return (
          f"{arg.split('=', 1)[0]}: the config has no field {'.'.join(path)!r}: it is now "
          f"--{name}.{RENAMED['.'.join(path)]}"
        )
      choices = sorted(node.keys()) if hasattr(node, "keys") else []
      close = difflib.get_close_matches(key, choices, n=3)
      where = f"{name}.{here}" if here else name
      return (
        f"{arg.split('=', 1)[0]}: the config has no field {'.'.join(path[: depth + 1])!r}"
        + (f" (did you mean {' or '.join(f'--{where}.{c}' for c in close)}?)" if close else "")
        + (f"; the fields of {where}: {', '.join(choices)}" if choices else f"; {where} is a value, not a section")
        + f". `{command()} --help` lists every field"
      )
  return None


def _bad_config_file(argv: list) -> str | None:
  """`--config=FILE[:VARIANT]` whose get_config raises (a variant it does not have, a bad value),
  described by the flag and the error's own message; else None. absl would print it inside a
  traceback of the config loader."""
  names = set(_config_flags()) | {"config"}
  for arg in argv[1:]:
    flag, _, path = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
    if flag not in names or not path:
      continue
    try:
      _load(path)
    except (TypeError, ValueError) as e:
      last = (str(e).strip().splitlines() or [""])[-1].strip()
      message = last.split(": ", 1)[1] if re.match(r"^[\w.]+(Error|Exception): ", last) else last
      return f"--{flag}={path}: {message}"
  return None


def define_config_file(default: str, help_text: str, **kwargs):
  """`config_flags.DEFINE_config_file("config", default, ...)` for a launcher with a default config:
  absl applies the command line's `--config.FIELD` overrides to the default as the flag is
  defined, so an override naming no field (or a renamed one) is reported here, one line, exit 2."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file("config", default, help_text, **kwargs)
  except (AttributeError, KeyError):
    message = _bad_override(sys.argv, default) or "a --config.FIELD override does not apply"
    if "--help" not in message:
      message += f"; `{command()} --help` lists every field"
    print(f"{command()}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _print_help(argv: list, default_config: str | None) -> None:
  rest = [a for a in argv[1:] if a not in HELP and a.split("=", 1)[0] not in HELP]
  try:  # Reads --config (and the rest) if given; required flags may be missing: help anyway.
    flags.FLAGS(argv[:1] + rest, known_only=True)
  except Exception:  # noqa: BLE001
    pass
  app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True)
  print("  --[no]verbose: on an error, print its traceback as well (also: CVJ_TRACEBACK=1)")
  for name in sorted(_config_flags()) or (["config"] if default_config else []):
    config = _config_of(name, argv, default_config)
    if config is None:
      continue
    source = next(
      (a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), default_config or "the default config"
    )
    print(
      f"\nconfig fields of --{name} ({source}; each is overridden with "
      f"--{name}.FIELD=VALUE; the config file's comments say what they do):"
    )
    for key, value in fields(config):
      print(f"  {key} = {value!r}")
  sys.stdout.flush()


def _parser(default_config: str | None):
  def parse(argv):
    if any(a in HELP for a in argv[1:]):
      try:
        _print_help(argv, default_config)
      except BrokenPipeError:  # `--help | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      sys.exit(0)
    bad_file = _bad_config_file(argv)
    if bad_file and not tracebacks_wanted():
      print(f"{command()}: error: {bad_file}", file=sys.stderr, flush=True)
      sys.exit(2)
    try:
      return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      if tracebacks_wanted():
        raise
      message = _bad_override(argv, default_config)
      if message is None:
        text = str(e).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
        message = f"the command line could not be read: {text}"
      print(f"{command()}: error: {message}", file=sys.stderr, flush=True)
      sys.exit(2)

  return parse


def _check_config_loaded() -> None:
  """A `--config` file that did not load raises at its first use; say so now, in one line."""
  for name, flag in flags.FLAGS._flags().items():  # pylint: disable=protected-access
    error = getattr(flag.value, "_error", None) if "." not in name else None
    if isinstance(error, OSError) and type(flag.value).__name__ == "_ErrorConfig":
      first = str(error).strip().splitlines()
      detail = first[-1].strip() if first else ""
      print(f"{command()}: error: --{name}: the config file does not load ({detail})", file=sys.stderr, flush=True)
      sys.exit(2)


def run(main, *, default_config: str | None = None) -> None:
  """absl's `app.run(main)` with the error handling of the module docstring. `default_config`:
  the config file whose fields `--help` lists when no `--config` is given."""

  def checked(argv):
    _check_config_loaded()
    return _guarded(main)(argv)

  app.run(checked, flags_parser=_parser(default_config))
