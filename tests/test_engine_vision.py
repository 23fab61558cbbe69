"""The decode engine runs the vision tower on patches padded to a few buckets: images of different
sizes in one bucket compile the tower once (counted in TRACE_COUNTS["vision"]), and the padded
tower gives the features of the unpadded one."""

import jax.numpy as jnp
import numpy as np
import pytest

from codevision_jax.models import build_model, prepare, presets
from codevision_jax.sampling import engine as engine_lib


def test_patch_buckets():
  assert [engine_lib.patch_bucket(n) for n in (1, 64, 65, 96, 97, 128, 129, 5120)] == [
    64,
    64,
    96,
    96,
    128,
    128,
    192,
    6144,
  ]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_the_tower_compiles_once_per_bucket_with_unchanged_features(family):
  model = build_model(getattr(presets, f"{family}_tiny")(), seed=2)
  c = model.config
  e = engine_lib.DecodeEngine(model, chunk=16)
  e.allocate(2, 256)
  rng = np.random.default_rng(0)
  patch_dim = 3 * 2 * c.vision.patch_size**2
  before = engine_lib.TRACE_COUNTS["vision"]
  # 24, 16, 36 and 12 patches: all in the 64-patch bucket.
  for grid in ((1, 4, 6), (1, 4, 4), (1, 6, 6), (1, 2, 6)):
    pv = rng.standard_normal((int(np.prod(grid)), patch_dim)).astype(np.float32)
    grid = np.asarray([grid], np.int64)
    padded = engine_lib._run_vision(e, pv, grid)
    features, deep = model.model.visual(jnp.asarray(pv), prepare.vision_metadata(c, grid).as_arrays())
    n = len(features)
    np.testing.assert_allclose(np.asarray(padded[0][:n]), np.asarray(features), atol=1e-5)
    for a, b in zip(padded[1] or (), deep or ()):
      np.testing.assert_allclose(np.asarray(a[:n]), np.asarray(b), atol=1e-5)
    ids = [c.vision_start_token_id] + [c.image_token_id] * (n) + [c.vision_end_token_id, 5]
    e.append(0, np.asarray(ids, np.int32), pv, grid)
  assert engine_lib.TRACE_COUNTS["vision"] - before <= 1
