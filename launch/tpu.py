"""python -m launch.tpu --tpu=NAME --zone=ZONE [--project=P] -- python -m launch.sft --config=...

Runs one command on every worker of a Cloud TPU VM slice over `gcloud compute tpus tpu-vm ssh
--worker=all`: each worker changes to `--repo_dir` (relative paths: from the remote home), runs
the command with `CVJ_DISTRIBUTED=auto` (so `jax.distributed.initialize()` detects the slice from
the VM's metadata, see codevision_jax/distributed_env.py) and any `--env KEY=VALUE`, and tees its
output to `<logdir>/worker-<N>.log` on that worker. The repository and its .venv must already be
on every worker at `--repo_dir`; the workdir should be a bucket (gs://...) all workers share.

  --dry_run   print the gcloud command instead of running it
  --stop      kill the launched training processes on every worker (pkill -f of the command's
              `-m launch.X` module; launch.sft, launch.rl and launch.rollout without a command)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS

# The worker's index: TPU_WORKER_ID where set (GKE), else the TPU VM's metadata, else its name.
WORKER_ID = (
  "${TPU_WORKER_ID:-$(curl -sf -H Metadata-Flavor:Google http://metadata.google."
  "internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)}"
)
DEFAULT_MODULES = ("launch.sft", "launch.rl", "launch.rollout")


def define_flags():
  """The command's flags, defined only when it runs (tests import this module beside other
  launchers)."""
  flags.DEFINE_string("tpu", None, "The TPU VM (slice) name.")
  flags.DEFINE_string("zone", None, "Its zone, e.g. us-central2-b.")
  flags.DEFINE_string("project", None, "Its project (default: gcloud's configured project).")
  flags.DEFINE_string("worker", "all", "Which workers: all, or a list such as 0,3.")
  flags.DEFINE_string("repo_dir", "codevision-jax", "The repository on the workers (relative: from the remote home).")
  flags.DEFINE_string("logdir", "logs/tpu", "Per-worker logs, on each worker (relative: from --repo_dir).")
  flags.DEFINE_multi_string("env", [], "KEY=VALUE set for the command on every worker.")
  flags.DEFINE_multi_string(
    "gcloud_arg", [], "Extra argument of the gcloud ssh command, e.g. --gcloud_arg=--tunnel-through-iap."
  )
  flags.DEFINE_bool("dry_run", False, "Print the command instead of running it.")
  flags.DEFINE_bool("stop", False, "Kill the launched training processes on the workers.")
  flags.mark_flags_as_required(["tpu", "zone"])


def remote_path(path: str) -> str:
  """`path` quoted for the remote shell, with a leading ~/ still meaning the remote home."""
  if path == "~":
    return '"$HOME"'
  if path.startswith("~/"):
    return '"$HOME"/' + shlex.quote(path[2:])
  return shlex.quote(path)


def parse_env(items) -> dict[str, str]:
  """{'KEY': 'VALUE'} from ['KEY=VALUE', ...]."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise ValueError(f"--env {item!r}: write it as KEY=VALUE with KEY a shell variable name.")
    out[key] = value
  return out


def run_command(command, repo_dir: str = "codevision-jax", logdir: str = "logs/tpu", env: dict | None = None) -> str:
  """The shell line each worker runs: the training command with its environment, its output
  teed into `<logdir>/worker-<N>.log`; the line's status is the command's (pipefail)."""
  if not command:
    raise ValueError(
      "no command to run: add it after --, e.g. -- .venv/bin/python -m launch.sft "
      "--config=configs/qwen2_5_vl_7b_sft.py --workdir=gs://BUCKET/runs/sft"
    )
  env = {"CVJ_DISTRIBUTED": "auto", "PYTHONUNBUFFERED": "1", **(env or {})}
  assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
  log = f"{remote_path(logdir)}/worker-$W.log"
  return (
    f"set -o pipefail; cd {remote_path(repo_dir)} && mkdir -p {remote_path(logdir)} && "
    f"W={WORKER_ID} && {assigns} {shlex.join(command)} 2>&1 | tee {log}"
  )


def modules(command) -> list[str]:
  """The `-m` modules of a command (launch.sft, ...); the training launchers without one."""
  found = [command[i + 1] for i, a in enumerate(command[:-1]) if a == "-m"]
  found += [a[2:] for a in command if a.startswith("-m") and len(a) > 2]
  return found or list(DEFAULT_MODULES)


def stop_command(command=()) -> str:
  """The shell line that kills the command's processes: `pkill -f` of its `-m` module(s). The
  pattern's first letter is bracketed so that it does not match the shell running pkill."""
  names = [f"[{m[0]}]{re.escape(m[1:])}" for m in modules(list(command))]
  pattern = "-m (" + "|".join(names) + ")( |$)"
  return f"pkill -f -- {shlex.quote(pattern)} && echo stopped on $(hostname) || true"


def gcloud_ssh(
  tpu: str, zone: str, remote: str, project: str | None = None, worker: str = "all", extra=()
) -> list[str]:
  """The argument list of `gcloud compute tpus tpu-vm ssh` running `remote` on the workers."""
  args = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}"]
  if project:
    args.append(f"--project={project}")
  return args + [f"--worker={worker}", *extra, f"--command={remote}"]


def main(argv):
  command = argv[1:]
  if FLAGS.stop:
    remote = stop_command(command)
  else:
    try:
      remote = run_command(command, FLAGS.repo_dir, FLAGS.logdir, parse_env(FLAGS.env))
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  args = gcloud_ssh(FLAGS.tpu, FLAGS.zone, remote, FLAGS.project, FLAGS.worker, FLAGS.gcloud_arg)
  if FLAGS.dry_run:
    print(shlex.join(args))
    return 0
  print(
    f"== {'stopping' if FLAGS.stop else 'running'} on {FLAGS.tpu} workers {FLAGS.worker}"
    + ("" if FLAGS.stop else "; logs in " + os.path.join(FLAGS.repo_dir, FLAGS.logdir, "worker-N.log")),
    flush=True,
  )
  try:
    return subprocess.run(args, check=False).returncode
  except FileNotFoundError:
    print("gcloud is not on PATH: install the Google Cloud CLI (or use --dry_run to see the command).", file=sys.stderr)
    return 127


if __name__ == "__main__":
  define_flags()
  app.run(main)
