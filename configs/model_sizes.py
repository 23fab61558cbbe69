"""python -c "from configs import model_sizes; print(model_sizes.get_config('qwen3_vl_8b'))"

The model sizes a recipe can name, as `config.model.preset` (e.g. `--config.model.preset=qwen3_vl_2b`
for a random model of that size in launch.sft), or build or load directly:

    from codevision_jax.models import build_model, abstract_model
    from configs.model_sizes import vl_config
    model = abstract_model(vl_config("qwen3_vl_8b"))  # shapes only; build_model(...): random weights
    model = cvj.load_hf("/ckpt/Qwen3-VL-8B-Instruct")   # weights; the architecture from config.json

`get_config("qwen3_vl_8b")` is the ml_collections form of one entry
(`--config=configs/model_sizes.py:qwen3_vl_8b` where a binary takes a size as its config).
The architectures live in `codevision_jax.models.presets`; this file names them and records the
published checkpoints they correspond to and their exact parameter counts, which
tests/test_presets.py checks against a full-size abstract build of each.

| name | checkpoints (HF) | parameters | published |
| --- | --- | --- | --- |
| qwen2_5_vl_3b | Qwen/Qwen2.5-VL-3B-Instruct | 3,754,622,976 | 3.75B |
| qwen2_5_vl_7b | Qwen/Qwen2.5-VL-7B-Instruct | 8,292,166,656 | 8.29B |
| qwen2_5_vl_32b | Qwen/Qwen2.5-VL-32B-Instruct | 33,448,292,352 | 33.5B |
| qwen2_5_vl_72b | Qwen/Qwen2.5-VL-72B-Instruct | 73,406,351,360 | 73.4B |
| qwen3_vl_2b | Qwen/Qwen3-VL-2B-{Instruct,Thinking} | 2,127,532,032 | 2.13B |
| qwen3_vl_4b | Qwen/Qwen3-VL-4B-{Instruct,Thinking} | 4,437,815,808 | 4.44B |
| qwen3_vl_8b | Qwen/Qwen3-VL-8B-{Instruct,Thinking} | 8,767,123,696 | 8.77B |
| qwen3_vl_32b | Qwen/Qwen3-VL-32B-{Instruct,Thinking} | 33,357,390,064 | 33.4B |

`qwen2_5_vl_tiny` and `qwen3_vl_tiny` are the same architectures at toy widths (tests, CPU demos).
"""

import dataclasses

import ml_collections

from codevision_jax.models.config import VLConfig
from codevision_jax.models.presets import PRESETS, preset


@dataclasses.dataclass(frozen=True)
class ModelSize:
  checkpoints: tuple[str, ...]
  parameters: int  # exact, embeddings included (tied embeddings counted once)
  published: str   # as the model card rounds it


def _qwen3(size: str) -> tuple[str, ...]:
  return (f"Qwen/Qwen3-VL-{size}-Instruct", f"Qwen/Qwen3-VL-{size}-Thinking")


SIZES = {
    "qwen2_5_vl_3b": ModelSize(("Qwen/Qwen2.5-VL-3B-Instruct",), 3_754_622_976, "3.75B"),
    "qwen2_5_vl_7b": ModelSize(("Qwen/Qwen2.5-VL-7B-Instruct",), 8_292_166_656, "8.29B"),
    "qwen2_5_vl_32b": ModelSize(("Qwen/Qwen2.5-VL-32B-Instruct",), 33_448_292_352, "33.5B"),
    "qwen2_5_vl_72b": ModelSize(("Qwen/Qwen2.5-VL-72B-Instruct",), 73_406_351_360, "73.4B"),
    "qwen3_vl_2b": ModelSize(_qwen3("2B"), 2_127_532_032, "2.13B"),
    "qwen3_vl_4b": ModelSize(_qwen3("4B"), 4_437_815_808, "4.44B"),
    "qwen3_vl_8b": ModelSize(_qwen3("8B"), 8_767_123_696, "8.77B"),
    "qwen3_vl_32b": ModelSize(_qwen3("32B"), 33_357_390_064, "33.4B"),
}
NAMES = tuple(sorted(PRESETS))


def vl_config(name: str) -> VLConfig:
  """The architecture of a named size (`ValueError` listing the names for an unknown one)."""
  return preset(name)


def get_config(name: str = "qwen3_vl_8b") -> ml_collections.ConfigDict:
  """One size as a config: its name, family, published checkpoints and parameter count."""
  cfg = vl_config(name)
  size = SIZES.get(name)
  c = ml_collections.ConfigDict()
  c.preset = name
  c.model_type = cfg.model_type
  c.checkpoints = list(size.checkpoints) if size else []
  c.parameters = size.parameters if size else 0
  c.hf_config = cfg.to_hf_dict()
  return c
