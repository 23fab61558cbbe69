"""A run's workdir, spelled here and nowhere else:

    <workdir>/
      checkpoints/<step>/        an Orbax checkpoint (runtime.checkpointing), its items:
        state/                   the train state {"step", "params", "opt_state"[, "reference"]}
        frozen/                  the parameters that do not train
        data/                    the data iterator's state (JSON)
        config/metadata          the run's config (JSON)
      tensorboard/               TensorBoard events
      metrics.jsonl              RL: one JSON line of metrics per round (and held-out evaluation)
      rollouts/round_NNNNN/      RL: a few sampled trajectories of each round
        trajectories.jsonl, transcripts.jsonl
      size_cache/                SFT: the record sizes per data file (data.size_cache "")
      dropped_records.jsonl      SFT: the records no batch holds (data.drop_oversized, data.skip_bad)
      tokenizer/                 the tiny tokenizer of a random preset without model.tokenizer
      sft/                       launch.rl: the SFT stage it runs first (itself an SFT workdir)
      hf/                        where the launchers' summaries suggest exporting to

Every function is a pure function of its arguments (no file is touched); paths are relative when
`workdir` is (`os.path.abspath` them where a library needs absolute ones, e.g. Orbax).
"""

from __future__ import annotations

import os

STATE, FROZEN, DATA, CONFIG = ITEMS = ("state", "frozen", "data", "config")
"""The items of a checkpoint step, each a directory of `checkpoints/<step>/`."""


def checkpoints(workdir: str) -> str:
  """The directory of the run's Orbax checkpoints, one `<step>/` each."""
  return os.path.join(workdir, "checkpoints")


def step_dir(workdir: str, step: int) -> str:
  """The checkpoint of `step`: `checkpoints/<step>/`."""
  return os.path.join(checkpoints(workdir), str(step))


def item(step_directory: str, name: str) -> str:
  """One item (`ITEMS`) of the checkpoint in `step_directory`."""
  if name not in ITEMS:
    raise ValueError(f"{name!r} is not an item of a checkpoint; the items are {ITEMS}")
  return os.path.join(step_directory, name)


def saved_config(step_directory: str) -> str:
  """The JSON file of the config saved with the checkpoint in `step_directory`."""
  return os.path.join(item(step_directory, CONFIG), "metadata")


def tensorboard(workdir: str) -> str:
  return os.path.join(workdir, "tensorboard")


def metrics(workdir: str) -> str:
  """RL's `metrics.jsonl`: one JSON line per round."""
  return os.path.join(workdir, "metrics.jsonl")


def rollouts(workdir: str) -> str:
  """RL's saved trajectories, one `round_NNNNN/` per round."""
  return os.path.join(workdir, "rollouts")


def round_dir(workdir: str, round_index: int) -> str:
  """The trajectories saved in round `round_index`: `rollouts/round_NNNNN/`."""
  return os.path.join(rollouts(workdir), f"round_{round_index:05d}")


def size_cache(workdir: str) -> str:
  """The default size cache (`data.size_cache` ""): record sizes per data file."""
  return os.path.join(workdir, "size_cache")


def dropped_records(workdir: str) -> str:
  """SFT's list of the records left out, one JSON line each."""
  return os.path.join(workdir, "dropped_records.jsonl")


def tokenizer(workdir: str) -> str:
  """The tiny tokenizer built for a random preset that names no tokenizer."""
  return os.path.join(workdir, "tokenizer")


def sft(workdir: str) -> str:
  """launch.rl's SFT stage, run first when the config has an `sft` section."""
  return os.path.join(workdir, "sft")


def hf(workdir: str) -> str:
  """The HF export the end-of-run summaries suggest."""
  return os.path.join(workdir, "hf")
