"""GRPO: python -m launch.rl --config=configs/tiny_rl.py --workdir=DIR

Any config field can be overridden (`--config.train.rounds=50 --config.optim.lr=1e-6`). With no
`--config.executor.urls`, an executor service is started for the run (`executor.workers` workers)
and its isolation layers are logged. If the config has an `sft` section and no
`init.sft_workdir`, that SFT runs first into `<workdir>/sft` (resuming like any SFT run) and RL
starts from it. Rerunning with the same workdir resumes. `--dry_run` (launch/dry_run.py) checks that
the recipe fits the accelerators without building anything: add `--dry_run_devices=8` to check 8
GPUs here.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from launch import dry_run, errors, summary

flags.DEFINE_bool(
  "orbax_logs", False, "Show the INFO log lines of Orbax (checkpoint internals) and of JAX's backend probing."
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, metrics, rollouts.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  logging.getLogger().setLevel(logging.INFO)
  sft_first = cfg.get("sft") is not None and not cfg.init.sft_workdir and not cfg.model.path
  if dry_run.requested():
    dry_run.prepare_devices()
    return dry_run.run(([("sft", cfg.sft)] if sft_first else []) + [("rl", cfg)])
  if not workdir:
    raise app.UsageError("--workdir is required (where checkpoints, logs and rollouts go)")
  from codevision_jax import distributed_env

  distributed_env.initialize(cfg.get("distributed"))  # Slurm / torchrun env / TPU / config.
  from codevision_jax.runtime import layout, run_setup

  run_setup.quiet_orbax(flags.FLAGS.orbax_logs)
  from codevision_jax.rl import loop
  from codevision_jax.rl import rollouts

  # Both stages' meshes are checked before either runs (several processes: one block each).
  if sft_first:
    run_setup.make_mesh(cfg.sft.mesh, "sft.mesh")
  run_setup.make_mesh(cfg.mesh, "mesh")
  if sft_first:
    from codevision_jax.train import loop as sft_loop

    sft_dir = layout.sft(workdir)
    print(f"== SFT first: {cfg.sft.train.steps} steps into {sft_dir}", flush=True)
    sft_loop.train(cfg.sft, sft_dir)
    cfg.init.sft_workdir = sft_dir
  # A local executor service (its isolation layers logged) when executor.urls is empty.
  with rollouts.executor_services(cfg.executor.urls, workers=cfg.executor.workers) as urls:
    result = loop.train(cfg, workdir, executor_urls=urls)
  import jax

  if jax.process_index() == 0:  # Process 0 tells what was written.
    print(summary.rl_text(workdir, result.steps, result.history))


if __name__ == "__main__":
  errors.run(main, default_config="configs/tiny_rl.py")
