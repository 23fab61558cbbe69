"""HF checkpoint import and export: round trips through transformers, layouts, and clear errors."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

import codevision_jax as cvj
import hf_reference as H
from codevision_jax.hf import safetensors_io
from codevision_jax.models import VLConfig


@pytest.fixture(scope="module")
def hf_model():
  return H.random_hf_model(H.tiny_hf_config(tie=False), seed=7)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
  """A checkpoint as transformers saves it, split into many small shards with an index."""
  path = str(tmp_path_factory.mktemp("hf") / "ckpt")
  hf_model.save_pretrained(path, max_shard_size="40KB")
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  return path


def _ids(rng):
  return rng.integers(0, 240, (2, 11))


def test_load_sharded_checkpoint_saved_by_transformers(hf_model, hf_dir):
  model = cvj.load_hf(hf_dir, dtype="float32")
  ids = _ids(np.random.default_rng(0))
  np.testing.assert_allclose(np.asarray(model(ids)), H.hf_logits(hf_model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_export_loads_in_transformers_bit_identical(tie, tmp_path):
  hf = H.random_hf_model(H.tiny_hf_config(tie=tie, kv_heads=1), seed=8)
  model = H.flax_from_hf(hf)
  out = cvj.save_hf(model, str(tmp_path / "export"), max_shard_size="60KB")
  index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
  # The official Qwen release layout.
  assert "visual.patch_embed.proj.weight" in index["weight_map"]
  assert "model.layers.0.self_attn.q_proj.weight" in index["weight_map"]
  assert ("lm_head.weight" in index["weight_map"]) != tie
  reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
  expected, got = hf.state_dict(), reloaded.state_dict()
  assert set(expected) == set(got)
  for key in expected:
    assert torch.equal(expected[key], got[key]), key
  assert reloaded.config.tie_word_embeddings == tie


def test_export_bfloat16_single_file_and_copies_tokenizer_files(hf_dir, tmp_path):
  model = cvj.load_hf(hf_dir, dtype="float32")
  source = tmp_path / "source"
  source.mkdir()
  (source / "tokenizer_config.json").write_text("{}")
  (source / "preprocessor_config.json").write_text('{"patch_size": 14}')
  out = cvj.save_hf(model, str(tmp_path / "bf16"), dtype="bfloat16", source_dir=str(source))
  assert sorted(os.listdir(out)) == [
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer_config.json",
  ]
  reader = safetensors_io.SafetensorsFile(os.path.join(out, "model.safetensors"))
  assert reader.entries["lm_head.weight"]["dtype"] == "BF16"
  reloaded = cvj.load_hf(out, dtype="bfloat16")
  a = np.asarray(model.lm_head.kernel[...]).astype(np.dtype("bfloat16"))
  np.testing.assert_array_equal(np.asarray(reloaded.lm_head.kernel[...]), a)


def test_flat_official_config_form_loads(hf_model, hf_dir, tmp_path):
  """The flat config.json of the official release: text fields on top, rope_scaling + rope_theta."""
  nested = json.load(open(os.path.join(hf_dir, "config.json")))
  text = nested.pop("text_config")
  rope = text.pop("rope_parameters")
  flat = {
    **nested,
    **{k: v for k, v in text.items() if k not in ("model_type",)},
    "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
    "rope_theta": rope["rope_theta"],
    "model_type": "qwen2_5_vl",
  }
  flat["vision_config"]["in_chans"] = flat["vision_config"].pop("in_channels", 3)
  cfg_flat = VLConfig.from_hf_dict(flat)
  assert cfg_flat == VLConfig.from_hf_dict(json.load(open(os.path.join(hf_dir, "config.json"))))
  path = tmp_path / "flat"
  path.mkdir()
  for name in os.listdir(hf_dir):
    if name != "config.json":
      os.symlink(os.path.join(hf_dir, name), path / name)
  (path / "config.json").write_text(json.dumps(flat))
  ids = _ids(np.random.default_rng(1))
  np.testing.assert_allclose(
    np.asarray(cvj.load_hf(str(path), dtype="float32")(ids)), H.hf_logits(hf_model, ids), atol=1e-4, rtol=0
  )


def test_official_vision_field_names_are_read():
  """The official Qwen2.5-VL release names the input channels `in_chans`."""
  flat = {
    "model_type": "qwen2_5_vl",
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "rope_theta": 10000.0,
    "vision_config": {"in_chans": 1, "depth": 2, "hidden_size": 32, "num_heads": 2},
  }
  config = VLConfig.from_hf_dict(flat)
  assert config.vision.in_channels == 1 and "in_chans" not in config.extra_vision
  assert config.to_hf_dict()["vision_config"]["in_channels"] == 1


def test_load_onto_mesh_places_parameters_by_logical_axes(hf_dir):
  from codevision_jax import parallel

  mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  model = cvj.load_hf(hf_dir, dtype="float32", mesh=mesh)
  kernel = model.model.language_model.layers[0].mlp.gate_proj.kernel[...]
  assert kernel.sharding.spec == parallel.logical_to_spec(("embed", "mlp"))
  assert kernel.addressable_shards[0].data.shape == (64 // 4, 128 // 2)
  ids = _ids(np.random.default_rng(2))
  reference = cvj.load_hf(hf_dir, dtype="float32")
  np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(reference(ids)), atol=1e-5, rtol=0)


# ---- bad checkpoints ------------------------------------------------------------------------


def _copy_single_file_checkpoint(hf_model, tmp_path):
  path = tmp_path / "single"
  hf_model.save_pretrained(str(path))
  return path


def _rewrite(path, edit):
  """Rewrites model.safetensors with `edit(dict of arrays)` applied."""
  file = path / "model.safetensors"
  reader = safetensors_io.SafetensorsFile(str(file))
  tensors = {k: reader.read(k) for k in reader.keys()}
  edit(tensors)
  specs = [(k, v.shape, v.dtype) for k, v in tensors.items()]
  safetensors_io.write_file(str(file), specs, tensors.__getitem__)


def test_unexpected_key_names_key_and_file(hf_model, tmp_path):
  path = _copy_single_file_checkpoint(hf_model, tmp_path)
  _rewrite(path, lambda t: t.__setitem__("model.layers.0.mystery.weight", np.zeros(3, np.float32)))
  with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mystery\.weight'"):
    cvj.load_hf(str(path))


def test_missing_key_is_named(hf_model, tmp_path):
  path = _copy_single_file_checkpoint(hf_model, tmp_path)
  _rewrite(path, lambda t: t.pop("model.layers.1.post_attention_layernorm.weight"))
  with pytest.raises(ValueError, match=r"lacks tensor 'model\.layers\.1\.post_attention_layernorm\.weight'"):
    cvj.load_hf(str(path))


def test_shape_mismatch_names_key_file_and_shapes(hf_model, tmp_path):
  path = _copy_single_file_checkpoint(hf_model, tmp_path)
  _rewrite(path, lambda t: t.__setitem__("model.norm.weight", np.ones(63, np.float32)))
  with pytest.raises(
    ValueError,
    match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(63,\), "
    r"the config implies \(64,\)",
  ):
    cvj.load_hf(str(path))


def test_unsupported_model_type_and_missing_files(hf_model, tmp_path):
  path = _copy_single_file_checkpoint(hf_model, tmp_path)
  config = json.load(open(path / "config.json"))
  (path / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
  with pytest.raises(ValueError, match=r"config\.json: model_type 'llava' is not supported"):
    cvj.load_hf(str(path))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps(config))
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    cvj.load_hf(str(empty))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    cvj.load_hf(str(tmp_path))
  (empty / "model.safetensors").write_bytes(b"\x01\x02")
  with pytest.raises(ValueError, match="not a valid safetensors file"):
    cvj.load_hf(str(empty))


def test_interrupted_export_leaves_previous_export_intact(hf_model, tmp_path, monkeypatch):
  model = H.flax_from_hf(hf_model)
  out = str(tmp_path / "export")
  cvj.save_hf(model, out, max_shard_size="60KB")
  before = sorted(os.listdir(out))
  calls = []

  def failing_write(path, specs, produce, metadata=None):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    return original(path, specs, produce, metadata)

  original = safetensors_io.write_file
  monkeypatch.setattr(safetensors_io, "write_file", failing_write)
  with pytest.raises(OSError, match="disk full"):
    cvj.save_hf(model, out, max_shard_size="60KB")
  assert sorted(os.listdir(out)) == before
  assert [p for p in os.listdir(tmp_path) if p != "export"] == []  # no partial directory left
  calls.clear()
  with pytest.raises(OSError):
    cvj.save_hf(model, str(tmp_path / "fresh"), max_shard_size="60KB")
  assert not os.path.exists(tmp_path / "fresh")
