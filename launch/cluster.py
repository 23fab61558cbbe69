"""python -m launch.cluster --scheduler=slurm|k8s --nodes=N [--dry_run] -- <training command>

Submits a multi-node GPU run: with `slurm`, `sbatch --nodes=N launch/slurm/train.sbatch
<command>` (one task per node; Slurm's variables give every process its id); with `k8s`,
launch/k8s/train-job.yaml with the node count, `--image` and the command filled in, applied with
`kubectl apply -f -`. `--dry_run` prints the command (and the manifest) instead of running it.

  python -m launch.cluster --scheduler=slurm --nodes=4 --dry_run -- \
    .venv/bin/python -m launch.sft --config=configs/qwen2_5_vl_7b_sft.py --workdir=/shared/runs/sft
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH_SCRIPT = os.path.join("launch", "slurm", "train.sbatch")
K8S_MANIFEST = os.path.join("launch", "k8s", "train-job.yaml")


def define_flags():
  """The command's flags, defined only when it runs (tests import this module beside other
  launchers)."""
  flags.DEFINE_enum("scheduler", None, ["slurm", "k8s"], "Where to submit.")
  flags.DEFINE_integer("nodes", 2, "Nodes (one process each, driving all its GPUs).")
  flags.DEFINE_multi_string("sbatch_arg", [], "Extra sbatch option, e.g. --sbatch_arg=--partition=gpu.")
  flags.DEFINE_string("image", None, "k8s: the container image (default: the manifest's).")
  flags.DEFINE_bool("dry_run", False, "Print what would run instead of running it.")
  flags.mark_flag_as_required("scheduler")


def sbatch_command(command, nodes: int, extra=()) -> list[str]:
  """The sbatch argument list submitting `command` on `nodes` nodes."""
  if not command:
    raise ValueError(
      "no training command: add it after --, e.g. -- .venv/bin/python -m "
      "launch.sft --config=configs/qwen2_5_vl_7b_sft.py --workdir=/shared/runs/sft"
    )
  return ["sbatch", f"--nodes={nodes}", *extra, SBATCH_SCRIPT, *command]


def k8s_manifest(command, nodes: int, image: str | None = None, path: str = os.path.join(ROOT, K8S_MANIFEST)) -> str:
  """The manifest at `path` with `nodes` pods (completions, parallelism, WORLD_SIZE), and the
  container's image and command replaced where given."""
  import yaml

  with open(path) as f:
    docs = list(yaml.safe_load_all(f))
  for doc in docs:
    if doc.get("kind") != "Job":
      continue
    doc["spec"]["completions"] = doc["spec"]["parallelism"] = nodes
    container = doc["spec"]["template"]["spec"]["containers"][0]
    if image:
      container["image"] = image
    if command:
      container["command"] = list(command)
    for var in container["env"]:
      if var["name"] == "WORLD_SIZE":
        var["value"] = str(nodes)
  return yaml.safe_dump_all(docs, sort_keys=False)


def main(argv):
  command = argv[1:]
  try:
    if FLAGS.scheduler == "slurm":
      args, stdin = sbatch_command(command, FLAGS.nodes, FLAGS.sbatch_arg), None
    else:
      args, stdin = ["kubectl", "apply", "-f", "-"], k8s_manifest(command, FLAGS.nodes, FLAGS.image)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.dry_run:
    print(shlex.join(args) + (" <<'EOF'\n" + stdin + "EOF" if stdin else ""))
    return 0
  try:
    return subprocess.run(args, input=stdin, text=True, cwd=ROOT, check=False).returncode
  except FileNotFoundError:
    print(
      f"{args[0]} is not on PATH: run this where the scheduler's client is installed (or use "
      "--dry_run to see the command).",
      file=sys.stderr,
    )
    return 127


if __name__ == "__main__":
  define_flags()
  app.run(main)
