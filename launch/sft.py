"""Supervised fine-tuning: python -m launch.sft --config=configs/tiny_sft.py --workdir=DIR

Any config field can be overridden: `--config.train.steps=100 --config.optim.lr=1e-5`. On a
cluster (Slurm, a Kubernetes job with torchrun-style variables, a TPU slice via launch.tpu) every
process calls `jax.distributed.initialize()` with what codevision_jax/distributed_env.py derives
from the scheduler, then feeds its own shard of the data; `--config.distributed.*` overrides it.
Rerunning with the same workdir resumes. `--dry_run` (launch/dry_run.py) checks that the recipe
fits the accelerators without building anything: add `--dry_run_devices=8` to check 8 GPUs here.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from launch import dry_run, errors, summary

flags.DEFINE_bool(
  "orbax_logs", False, "Show the INFO log lines of Orbax (checkpoint internals) and of JAX's backend probing."
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, the tokenizer.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  cfg = _CONFIG.value
  logging.getLogger().setLevel(logging.INFO)  # Before initialize, so its log line shows.
  if dry_run.requested():
    dry_run.prepare_devices()
    return dry_run.run([("sft", cfg)])
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (where checkpoints and logs go)")
  from codevision_jax import distributed_env

  distributed_env.initialize(cfg.distributed)  # Slurm / torchrun env / TPU / config; see there.
  import jax  # After flag parsing, so that --help is fast.
  from codevision_jax.runtime import run_setup

  run_setup.quiet_orbax(flags.FLAGS.orbax_logs)
  from codevision_jax.train import loop

  result = loop.train(cfg, _WORKDIR.value)
  if jax.process_index() == 0:
    print(summary.sft_text(_WORKDIR.value, result.last, result.dropped))


if __name__ == "__main__":
  errors.run(main, default_config="configs/tiny_sft.py")
