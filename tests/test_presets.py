"""Every named size builds at full size (abstractly: `nnx.eval_shape`, no memory) with exactly the
parameter count of the published checkpoint."""

import jax
import numpy as np
import pytest
from flax import nnx

from codevision_jax.models import VLConfig, abstract_model
from codevision_jax.models.presets import PRESETS, SIZES, preset

# Exact counts, embeddings included (tied ones once). Cross-checked against a closed-form count
# from the released config.json shapes and against the model cards' rounded totals
# (Qwen2.5-VL 3.75B / 8.29B / 33.5B / 73.4B; Qwen3-VL 2.13B / 4.44B / 8.77B / 33.4B).
EXPECTED = {
  "qwen2_5_vl_3b": 3_754_622_976,
  "qwen2_5_vl_7b": 8_292_166_656,
  "qwen2_5_vl_32b": 33_448_292_352,
  "qwen2_5_vl_72b": 73_406_351_360,
  "qwen3_vl_2b": 2_127_532_032,
  "qwen3_vl_4b": 4_437_815_808,
  "qwen3_vl_8b": 8_767_123_696,
  "qwen3_vl_32b": 33_357_390_064,
}


def count(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_parameter_count(name):
  model = abstract_model(preset(name))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model)))
  assert count(model) == EXPECTED[name]
  assert SIZES[name].parameters == EXPECTED[name]


def test_every_real_size_is_named_and_round_trips_through_config_json():
  assert set(EXPECTED) == {n for n in PRESETS if not n.endswith("_tiny")} == set(SIZES)
  for name in PRESETS:
    cfg = preset(name)
    assert VLConfig.from_hf_dict(cfg.to_hf_dict()) == cfg, name


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="qwen3_vl_8b"):
    preset("qwen3_vl_9b")
