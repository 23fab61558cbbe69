"""Readers of published VQA benchmark files, one module per benchmark, behind one registry: each
row becomes an `EvalItem`, or a `BadItem` that says what is wrong with it. Nothing is dropped
silently.

    items, bad = read_suite("hrbench4k", "/data/HR-Bench/hr_bench_4k.tsv", limit=100)

`path` is the benchmark file as published, or a directory holding it (searched recursively).
The suites (each module's docstring gives its published formats and where those were checked):

| suite | module | reads |
| --- | --- | --- |
| ocrbench | `ocrbench.py` | `OCRBench.json` + `OCRBench_Images/`, `OCRBench.tsv`, `.parquet` |
| chartqapro | `chartqapro.py` | the ahmed-masry/ChartQAPro `.parquet` |
| mvtoolbench | `mvtoolbench.py` | verl RL rows in a `.parquet` / `.jsonl` / `.json` |
| vstar | `vstar.py` | `test_questions.jsonl` with its images, the lmms-lab `.parquet` |
| hrbench4k, hrbench8k | `hrbench.py` | `hr_bench_4k.tsv` / `hr_bench_8k.tsv`, or a `.parquet` |

Any suite also reads "tfds:NAME@DIR": the RL records of a TFDS set that `launch.prepare_tfds`
made (e.g. of MVToolBench's parquet), one item per record as an MVToolBench row (`tfds.py`).
The built-in synthetic suite (`synthetic.py`) is generated, not read, and is not in `SUITES`.

What the readers share: `items.py` (EvalItem, BadItem), `fields.py` (field values), `images.py`
(image paths, bytes, base64) and `rows.py` (finding the file, table rows, the read loop).
Multiple-choice suites keep their ground truth as the option letter ("A"), which is what
`codevision_jax.rl.reward.answers_match` scores. A bad row (no question, no ground truth, a
missing image file, an image that does not decode) becomes a `BadItem`; a file that is missing or
not in the published format raises, naming the path and the file expected.

A new benchmark: a module with `read(path, limit=0) -> (items, bad)` built on `rows.read`, and
one line in `SUITES`.
"""

from __future__ import annotations

from typing import Callable

from evals.suites import chartqapro, hrbench, mvtoolbench, ocrbench, tfds, vstar
from evals.suites.hrbench import MCQ_INSTRUCTION
from evals.suites.items import BadItem, EvalItem

Reader = Callable[[str, int], tuple[list[EvalItem], list[BadItem]]]

SUITES: dict[str, Reader] = {
  "ocrbench": ocrbench.read,
  "chartqapro": chartqapro.read,
  "mvtoolbench": mvtoolbench.read,
  "vstar": vstar.read,
  "hrbench4k": hrbench.read_4k,
  "hrbench8k": hrbench.read_8k,
}

# The readers under the names the single-module `evals/suites.py` gave them.
read_ocrbench = ocrbench.read
read_chartqapro = chartqapro.read
read_mvtoolbench = mvtoolbench.read
read_vstar = vstar.read
read_hrbench4k = hrbench.read_4k
read_hrbench8k = hrbench.read_8k
read_tfds = tfds.read
TFDS_PREFIX = tfds.PREFIX


def read_suite(name: str, path: str, *, limit: int = 0) -> tuple[list[EvalItem], list[BadItem]]:
  """Items and bad items of suite `name` read from `path` (a file, or for suites published as a
  directory, the directory, or "tfds:NAME@DIR", a prepared TFDS set: `tfds.read`); `limit` > 0:
  only the first `limit` rows are read (bad ones count toward the limit)."""
  if name not in SUITES:
    raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
  if path.startswith(tfds.PREFIX):
    return tfds.read(name, path, limit)
  return SUITES[name](path, limit)


__all__ = [
  "SUITES",
  "BadItem",
  "EvalItem",
  "MCQ_INSTRUCTION",
  "TFDS_PREFIX",
  "read_suite",
  "read_tfds",
  "read_ocrbench",
  "read_chartqapro",
  "read_mvtoolbench",
  "read_vstar",
  "read_hrbench4k",
  "read_hrbench8k",
]
