"""Decoder layers under a scan (`model.scan_layers`): the scanned model computes what the unscanned
one does (logits, gradients, decoded tokens, DeepStack included), reads and writes the same HF
checkpoints, shards, rematerialises, and lowers to a program whose size does not grow with depth."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codevision_jax import parallel
from codevision_jax.hf import keymap
from codevision_jax.hf.load import load_hf
from codevision_jax.hf.safetensors_io import SafetensorsFile
from codevision_jax.hf.save import save_hf
from codevision_jax.models import build_model, presets
from codevision_jax.models.text import init_kv_cache
from codevision_jax.sampling import generate
from codevision_jax.runtime import remat

PRESETS = ["qwen2_5_vl_tiny", "qwen3_vl_tiny"]
PAD = 0


@functools.lru_cache(maxsize=None)
def _checkpoint(preset: str, tmp: str) -> str:
  """An HF directory of a random unscanned model of `preset` (float32)."""
  path = f"{tmp}/{preset}"
  save_hf(build_model(presets.preset(preset), seed=3), path)
  return path


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("scan"))


def _models(preset, tmp_dir, **kw):
  """The same weights unscanned and scanned."""
  path = _checkpoint(preset, tmp_dir)
  return (load_hf(path, dtype="float32", **kw), load_hf(path, dtype="float32", scan_layers=True, **kw))


def _batch(config, rows=((1, 4, 4),), seed=0):
  """Left-padded ids [B, T] with one image per row given by its grid (and a text-only last row),
  the attention mask, pixel values and grids."""
  rng = np.random.default_rng(seed)
  v = config.vision
  seqs = []
  for grid in rows:
    n = int(np.prod(grid)) // v.spatial_merge_size**2
    seqs.append(
      list(rng.integers(1, 300, 3))
      + [config.vision_start_token_id]
      + [config.image_token_id] * n
      + [config.vision_end_token_id]
      + list(rng.integers(1, 300, 4))
    )
  seqs.append(list(rng.integers(1, 300, 5)))
  length = max(map(len, seqs))
  ids = np.full((len(seqs), length), PAD, np.int32)
  mask = np.zeros_like(ids)
  for i, s in enumerate(seqs):
    ids[i, length - len(s) :] = s
    mask[i, length - len(s) :] = 1
  grid = np.asarray(rows, np.int64)
  patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
  pv = rng.standard_normal((int(grid.prod(-1).sum()), patch_dim)).astype(np.float32)
  return ids, mask, pv, grid


def _layer_params(model, i):
  """Layer i's parameters as {sub-path: array}, from either form."""
  flat = nnx.to_flat_state(nnx.state(model.model.language_model.layers, nnx.Param))
  if model.model.language_model.scan_layers:
    return {p: np.asarray(v.get_value()[i]) for p, v in flat}
  return {p[1:]: np.asarray(v.get_value()) for p, v in flat if p[0] == i}


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_and_gradients_equal_the_unscanned_model(preset, tmp_dir):
  plain, scanned = _models(preset, tmp_dir)
  assert scanned.model.language_model.layers.mlp.gate_proj.kernel.shape == (4, 128, 256)
  ids, mask, pv, grid = _batch(plain.config)
  a, b = np.asarray(plain(ids, pv, grid, mask)), np.asarray(scanned(ids, pv, grid, mask))
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)

  positions, meta = plain.prepare(ids, grid, mask)
  args = (jnp.asarray(ids), jnp.asarray(pv), meta, jnp.asarray(mask), jnp.asarray(positions))

  @nnx.jit
  @nnx.grad
  def grads(model, *args):
    return jnp.sum(jnp.tanh(model.forward(*args)) * jnp.asarray(mask)[..., None])

  ga, gb = grads(plain, *args), grads(scanned, *args)
  for i in range(4):
    da, db = _layer_params(_as_model(plain, ga), i), _layer_params(_as_model(scanned, gb), i)
    assert set(da) == set(db)
    for p in da:
      _close(db[p], da[p], f"layer {i} {p}")
  # Parameters outside the decoder layers (the vision tower, embeddings) get the same gradient.
  rest = lambda g: {
    p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g) if "layers" not in [str(x) for x in p[:3]]
  }
  ra, rb = rest(ga), rest(gb)
  assert set(ra) == set(rb)
  for p in ra:
    _close(rb[p], ra[p], str(p))


def _close(actual, expected, what: str, rel: float = 1e-5):
  """Equal up to float32 reordering: every difference under `rel` times the largest entry."""
  scale = max(float(np.abs(expected).max()), 1e-30)
  assert float(np.abs(actual - expected).max()) <= rel * scale, what


def _as_model(model, grads):
  """A copy of `model` holding `grads` as its parameters (to read them by layer)."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, grads, rest)


@pytest.mark.parametrize("preset", PRESETS)
def test_decode_gives_the_same_tokens(preset, tmp_dir):
  plain, scanned = _models(preset, tmp_dir)
  ids, mask, pv, grid = _batch(plain.config, rows=((1, 4, 4), (1, 6, 4)), seed=1)
  kw = dict(max_new_tokens=8, pad_token_id=PAD)
  ta, la = generate(plain, ids, pv, grid, mask, **kw)
  tb, lb = generate(scanned, ids, pv, grid, mask, **kw)
  np.testing.assert_array_equal(np.asarray(tb), np.asarray(ta))
  np.testing.assert_allclose(np.asarray(lb), np.asarray(la), atol=1e-4)
  # Sampling (temperature 1) draws the same tokens too.
  kw.update(temperature=1.0, seed=5)
  np.testing.assert_array_equal(
    np.asarray(generate(scanned, ids, pv, grid, mask, **kw)[0]),
    np.asarray(generate(plain, ids, pv, grid, mask, **kw)[0]),
  )


def test_kv_cache_forms():
  cfg = presets.preset("qwen2_5_vl_tiny")
  plain = build_model(cfg).model.language_model
  scanned = build_model(cfg, scan_layers=True).model.language_model
  per_layer = init_kv_cache(plain, 3, 16, jnp.float32)
  stacked = init_kv_cache(scanned, 3, 16, jnp.float32)
  assert len(per_layer) == 4 and per_layer[0]["k"].shape == (3, 2, 16, 32)
  assert stacked["k"].shape == stacked["v"].shape == (4, 3, 2, 16, 32)
  assert isinstance(init_kv_cache(cfg.text, 3, 16, jnp.float32), list)


@pytest.mark.parametrize("preset", PRESETS)
def test_hf_round_trip_is_byte_identical(preset, tmp_dir, tmp_path):
  source = _checkpoint(preset, tmp_dir)
  plain, scanned = _models(preset, tmp_dir)
  save_hf(scanned, str(tmp_path / "scanned"))
  save_hf(plain, str(tmp_path / "plain"))
  for name in ("model.safetensors", "config.json"):
    with open(tmp_path / "scanned" / name, "rb") as f, open(tmp_path / "plain" / name, "rb") as g:
      assert f.read() == g.read(), name
  src, out = (
    SafetensorsFile(f"{source}/model.safetensors"),
    SafetensorsFile(str(tmp_path / "scanned" / "model.safetensors")),
  )
  assert list(src.keys()) == list(out.keys())
  for key in src.keys():
    np.testing.assert_array_equal(out.read(key), src.read(key), err_msg=key)
  # One mapping per layer, in the unscanned model's order.
  assert [m.hf_key for m in keymap.param_mappings(scanned, scanned.config)] == [
    m.hf_key for m in keymap.param_mappings(plain, plain.config)
  ]


def test_sharded_scanned_model_runs(tmp_dir):
  mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  plain, _ = _models("qwen3_vl_tiny", tmp_dir)
  _, scanned = _models("qwen3_vl_tiny", tmp_dir, mesh=mesh)
  kernel = scanned.model.language_model.layers.mlp.gate_proj.kernel
  assert kernel.get_value().sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
  ids, mask, pv, grid = _batch(plain.config)
  positions, meta = plain.prepare(ids, grid, mask)
  forward = nnx.jit(lambda m, *a: m.forward(*a))
  args = (jnp.asarray(ids), jnp.asarray(pv), meta, jnp.asarray(mask), jnp.asarray(positions))
  np.testing.assert_allclose(np.asarray(forward(scanned, *args)), np.asarray(forward(plain, *args)), atol=1e-5, rtol=0)
  # A random scanned model shards by the same rules.
  random = parallel.shard_model(build_model(plain.config, scan_layers=True), mesh)
  q = random.model.language_model.layers.self_attn.q_proj.kernel.get_value()
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def test_remat_applies_inside_the_scan(tmp_dir):
  plain, scanned = _models("qwen3_vl_tiny", tmp_dir)
  remat.apply_remat(scanned, "full")
  assert type(scanned.model.language_model.layers).__name__ == "RematDecoderLayer"
  ids, mask, pv, grid = _batch(plain.config)
  positions, meta = plain.prepare(ids, grid, mask)
  args = (jnp.asarray(ids), jnp.asarray(pv), meta, jnp.asarray(mask), jnp.asarray(positions))

  def loss(model, *args):
    return jnp.mean(model.forward(*args) ** 2)

  # Text only (no vision blocks, which are rematerialised too): the checkpoint is the decoder's,
  # inside the scan's body.
  graphdef, state = nnx.split(scanned)
  text_loss = lambda s: loss(nnx.merge(graphdef, s), jnp.asarray(ids))
  scans = [e for e in jax.make_jaxpr(jax.grad(text_loss))(state).jaxpr.eqns if e.primitive.name == "scan"]
  assert scans and any(_has_checkpoint(e.params["jaxpr"].jaxpr) for e in scans)
  ga = nnx.jit(nnx.grad(loss))(plain, *args)
  gb = nnx.jit(nnx.grad(loss))(scanned, *args)
  for i in range(4):
    da, db = _layer_params(_as_model(plain, ga), i), _layer_params(_as_model(scanned, gb), i)
    for p in da:
      _close(db[p], da[p], f"layer {i} {p}")


def _has_checkpoint(jaxpr) -> bool:
  """Whether a jaxpr (or one nested in it) has a rematerialisation."""
  for e in jaxpr.eqns:
    if e.primitive.name in ("checkpoint", "remat", "remat2"):
      return True
    for v in e.params.values():
      inner = getattr(v, "jaxpr", None)
      if inner is not None and _has_checkpoint(getattr(inner, "jaxpr", inner)):
        return True
  return False


def _hlo_size(layers: int, scan: bool) -> int:
  """Characters of the StableHLO of a text-only forward of a tiny model with `layers` layers."""
  cfg = presets.preset("qwen2_5_vl_tiny")
  cfg = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "num_hidden_layers": layers}))
  model = build_model(cfg, scan_layers=scan)
  graphdef, state = nnx.split(model)
  ids = jnp.zeros((2, 16), jnp.int32)
  lowered = jax.jit(lambda s, ids: nnx.merge(graphdef, s).forward(ids)).lower(state, ids)
  return len(lowered.as_text())


def test_lowered_program_does_not_grow_with_depth():
  scanned = _hlo_size(8, True) / _hlo_size(2, True)
  unscanned = _hlo_size(8, False) / _hlo_size(2, False)
  assert scanned < 1.1, scanned
  assert unscanned > 2.0, unscanned


def test_sft_with_scanned_layers_and_remat_trains_sharded_and_exports(tmp_path):
  from test_train_step import small_config
  from codevision_jax.train import loop
  from codevision_jax.runtime import export

  c = small_config(data=1, fsdp=4, tensor=2)
  c.model.scan_layers = True
  c.train.remat = "full"
  c.train.steps = c.train.checkpoint_every = 2
  out = loop.train(c, str(tmp_path / "run"))
  losses = [h["loss"] for h in out.history]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  kernel = out.state["params"]["model"]["language_model"]["layers"]["mlp"]["gate_proj"]["kernel"]
  assert kernel.shape == (4, 128, 256) and len(kernel.sharding.device_set) == 8
  # The run's checkpoint exports per-layer HF tensors, which load (unscanned) as the trained ones.
  hf_dir = export.export_run(str(tmp_path / "run"), str(tmp_path / "hf"))
  plain = load_hf(hf_dir, dtype="float32")
  trained = np.asarray(jax.device_get(kernel))
  for i in range(4):
    np.testing.assert_array_equal(
      np.asarray(plain.model.language_model.layers[i].mlp.gate_proj.kernel[...]), trained[i]
    )
  # Each layer was read by itself; where the layout is not found, the whole array is restored.
  assert not export._slice_fallback_logged
  np.testing.assert_array_equal(
    export._stacked_layer(str(tmp_path / "absent"), ("params", "x"), 1, lambda: np.arange(3)), np.arange(3)
  )


@pytest.mark.parametrize("preset", PRESETS)
def test_slot_appends_and_decode_equal_the_unscanned_engine(preset, tmp_dir):
  """The engine's per-slot path (take and put a slot's rows of the stacked cache)."""
  from test_slot_append import _segment, engine

  plain, scanned = _models(preset, tmp_dir)
  rng = np.random.default_rng(2)
  first = rng.integers(1, 200, 30)
  segments = [_segment(plain, rng, 5, (1, 4, 6)), _segment(plain, rng, 7), _segment(plain, rng, 20)]
  engines = [engine(m, num_slots=3, capacity=128, chunk=16) for m in (plain, scanned)]
  assert isinstance(engines[1].state.cache, dict)
  for e in engines:
    e.append(0, first)
  for ids, pv, grid in segments:
    for e in engines:
      e.append(1, ids, pv, None if grid is None else np.asarray([grid], np.int64))
    np.testing.assert_allclose(np.asarray(engines[1].logits), np.asarray(engines[0].logits), atol=1e-5, rtol=0)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  active, budget, counts = np.array([True, True, False]), np.array([5, 5, 0]), np.zeros(3, np.int32)
  a, b = (e.decode(active, budget, keys, counts, max_steps=5) for e in engines)
  np.testing.assert_array_equal(np.asarray(b[0]), np.asarray(a[0]))
