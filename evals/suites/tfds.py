"""Any suite from a prepared TFDS set: "tfds:NAME@DIR" (or "tfds:NAME:SPLIT@DIR"), the RL records
that `launch.prepare_tfds --kind=rl` made (e.g. of MVToolBench's parquet), one item per record as
an MVToolBench row is."""

from __future__ import annotations

from evals.suites import rows
from evals.suites.mvtoolbench import record_item

PREFIX = "tfds:"
_EXPECTED = "a TFDS set written by python -m launch.prepare_tfds --kind=rl"


def read(suite: str, spec: str, limit: int = 0):
  """Items of `suite` from a TFDS set that `launch.prepare_tfds --kind=rl` made of verl RL rows
  (an MVToolBench parquet, held-out prompts): `spec` is "tfds:NAME@DIR" (split train) or
  "tfds:NAME:SPLIT@DIR", the command's --name, --split and --data_dir. Each record is one item
  as an MVToolBench row is (user text, ground truth, one image, required transforms, box)."""
  from codevision_jax.data import tfds_source

  names, at, data_dir = spec[len(PREFIX) :].partition("@")
  name, _, split = names.partition(":")
  if not (at and name and data_dir):
    raise ValueError(
      f"--data={spec}: name a TFDS set as tfds:NAME@DIR or tfds:NAME:SPLIT@DIR "
      "(launch.prepare_tfds's --name, --split and --data_dir)"
    )
  try:
    source = tfds_source.TfdsSource(name, data_dir, split or tfds_source.DEFAULT_SPLIT)
  except tfds_source.TfdsError as e:
    raise ValueError(f"--data={spec}: {e}") from None
  raws = ((row, source[row]) for row in range(len(source)))
  to_item = lambda conv, row: record_item(conv, row, suite=suite, source=f"{spec}:{row}")
  return rows.read(suite, spec, raws, to_item, limit, _EXPECTED)
