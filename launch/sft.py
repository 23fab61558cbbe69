"""Supervised fine-tuning: python -m launch.sft --config=configs/tiny_sft.py --workdir=DIR

Any config field can be overridden: `--config.train.steps=100 --config.optim.lr=1e-5`. With
`--config.distributed.num_processes=N` (N > 1) every process calls `jax.distributed.initialize()`
first and then feeds its own shard of the data. Rerunning with the same workdir resumes.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, the tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cfg = _CONFIG.value
  import jax  # After flag parsing, so that --help is fast.
  if cfg.distributed.num_processes > 1:
    kw = {"num_processes": cfg.distributed.num_processes}
    if cfg.distributed.coordinator_address:
      kw["coordinator_address"] = cfg.distributed.coordinator_address
    if cfg.distributed.process_id >= 0:
      kw["process_id"] = cfg.distributed.process_id
    jax.distributed.initialize(**kw)
  logging.getLogger().setLevel(logging.INFO)
  from codevision_jax.train import loop
  loop.train(cfg, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
