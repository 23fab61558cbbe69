"""Model configuration: one dataclass tree for every Qwen-VL family, parsed from HF `config.json`.

HF publishes two layouts of the same information:

* the flat form of the official Qwen2.5-VL release: text fields at the top level, RoPE settings
  under `rope_scaling` (with `mrope_section`) and `rope_theta`;
* the nested form transformers 5 saves: `text_config`, `vision_config`, `rope_parameters`.

`VLConfig.from_hf_dict` reads both; `VLConfig.to_hf_dict` writes the nested form (which
transformers reads back unchanged), keeping any field we do not model in `extra_*` so that an
export round-trips the original file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The vision tower. Fields named as in HF's `vision_config`."""

  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  out_hidden_size: int = 3584
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  # Qwen2.5-VL: windowed attention except at `fullatt_block_indexes`.
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 2
  # Qwen3-VL: learned position embeddings and DeepStack mergers.
  num_position_embeddings: int = 0
  deepstack_visual_indexes: tuple[int, ...] = ()

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The language decoder. Fields named as in HF's `text_config`."""

  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  head_dim: int | None = None
  hidden_act: str = "silu"
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  # Qwen3-VL: interleaved M-RoPE, per-head q/k RMSNorm, no q/k/v bias.
  mrope_interleaved: bool = False
  attention_bias: bool = True
  qk_norm: bool = False
  # Qwen3-VL's o_proj has a bias exactly when q/k/v do (`attention_bias`); Qwen2.5-VL's never.
  o_proj_bias: bool = False
  max_position_embeddings: int = 128000

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class VLConfig:
  """A whole vision-language model."""

  model_type: str = "qwen2_5_vl"
  vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  text: TextConfig = dataclasses.field(default_factory=TextConfig)
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  tie_word_embeddings: bool = False
  # Fields of the HF file that this project does not model, written back on export.
  extra_top: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
  extra_text: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
  extra_vision: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def replace(self, **kw) -> "VLConfig":
    return dataclasses.replace(self, **kw)

  # ---- HF config.json ---------------------------------------------------------------------

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "VLConfig":
    """Parses an HF config dict (flat or nested). `source` names the file in errors."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
        f"{source}: model_type {model_type!r} is not supported; expected one of {list(SUPPORTED_MODEL_TYPES)}."
      )
    d = dict(d)
    if "text_config" in d and isinstance(d["text_config"], dict):
      text = dict(d.pop("text_config"))
    else:  # Flat form: every top-level key that is not a known top-level one is a text field.
      text = {k: d.pop(k) for k in list(d) if k not in _TOP_KEYS and k != "vision_config"}
    vision = dict(d.pop("vision_config", {}) or {})
    text_cfg, extra_text = _parse_text(text, model_type, source)
    vision_cfg, extra_vision = _parse_vision(vision, model_type, source)
    tie = d.pop("tie_word_embeddings", None)
    if tie is None:
      tie = bool(extra_text.get("tie_word_embeddings", False))
    extra_text.pop("tie_word_embeddings", None)
    top = {}
    for f in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
      if f in d:
        top[f] = int(d.pop(f))
    d.pop("model_type")
    return cls(
      model_type=model_type,
      vision=vision_cfg,
      text=text_cfg,
      tie_word_embeddings=bool(tie),
      extra_top=d,
      extra_text=extra_text,
      extra_vision=extra_vision,
      **top,
    )

  @classmethod
  def from_json_file(cls, path: str) -> "VLConfig":
    try:
      with open(path) as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: no config.json; a HF checkpoint directory needs one.") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e}).") from None
    return cls.from_hf_dict(d, source=path)

  def to_hf_dict(self) -> dict[str, Any]:
    """The nested transformers-5 form."""
    t, v = self.text, self.vision
    rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}
    if self.model_type == "qwen3_vl":
      rope["mrope_interleaved"] = True
    text = {
      **self.extra_text,
      "model_type": f"{self.model_type}_text",
      "vocab_size": t.vocab_size,
      "hidden_size": t.hidden_size,
      "intermediate_size": t.intermediate_size,
      "num_hidden_layers": t.num_hidden_layers,
      "num_attention_heads": t.num_attention_heads,
      "num_key_value_heads": t.num_key_value_heads,
      "hidden_act": t.hidden_act,
      "rms_norm_eps": t.rms_norm_eps,
      "max_position_embeddings": t.max_position_embeddings,
      "rope_parameters": rope,
    }
    if self.model_type == "qwen3_vl":
      text["head_dim"] = t.resolved_head_dim
      text["attention_bias"] = t.attention_bias
    vision = {
      **self.extra_vision,
      "model_type": f"{self.model_type}_vision",
      "depth": v.depth,
      "hidden_size": v.hidden_size,
      "intermediate_size": v.intermediate_size,
      "num_heads": v.num_heads,
      "in_channels": v.in_channels,
      "patch_size": v.patch_size,
      "spatial_merge_size": v.spatial_merge_size,
      "temporal_patch_size": v.temporal_patch_size,
      "out_hidden_size": v.out_hidden_size,
      "hidden_act": v.hidden_act,
    }
    if self.model_type == "qwen2_5_vl":
      vision.update(
        window_size=v.window_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes),
        tokens_per_second=v.tokens_per_second,
      )
    else:
      vision.update(
        num_position_embeddings=v.num_position_embeddings,
        deepstack_visual_indexes=list(v.deepstack_visual_indexes),
        rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta},
      )
    return {
      **self.extra_top,
      "model_type": self.model_type,
      "architectures": [_ARCHITECTURES[self.model_type]],
      "text_config": text,
      "vision_config": vision,
      "image_token_id": self.image_token_id,
      "video_token_id": self.video_token_id,
      "vision_start_token_id": self.vision_start_token_id,
      "vision_end_token_id": self.vision_end_token_id,
      "tie_word_embeddings": self.tie_word_embeddings,
    }


_ARCHITECTURES = {
  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
  "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
_TOP_KEYS = {
  "model_type",
  "architectures",
  "image_token_id",
  "video_token_id",
  "vision_start_token_id",
  "vision_end_token_id",
  "tie_word_embeddings",
  "transformers_version",
  "torch_dtype",
  "dtype",
  "vision_token_id",
  "_name_or_path",
}


def _pop_typed(d: dict, field: dataclasses.Field, source: str):
  value = d.pop(field.name)
  try:
    if field.type in ("int", int):
      return int(value)
    if field.type in ("float", float):
      return float(value)
    if field.type in ("bool", bool):
      return bool(value)
    if field.type.startswith("tuple"):
      return tuple(int(x) for x in value)
    if field.type.startswith("int | None"):
      return None if value is None else int(value)
    return value
  except (TypeError, ValueError):
    raise ValueError(f"{source}: field {field.name!r} has value {value!r}, expected {field.type}.") from None


def _parse_text(text: dict, model_type: str, source: str) -> tuple[TextConfig, dict]:
  text = dict(text)
  rope = dict(text.pop("rope_parameters", None) or text.pop("rope_scaling", None) or {})
  text.pop("rope_scaling", None)
  qwen3 = model_type == "qwen3_vl"
  rope_theta = text.pop("rope_theta", rope.get("rope_theta", 500000.0 if qwen3 else TextConfig.rope_theta))
  section = rope.get("mrope_section", [24, 20, 20] if qwen3 else None)  # Qwen3VLTextRotaryEmbedding's default
  if section is None:
    raise ValueError(
      f"{source}: the text config has no rope_parameters/rope_scaling.mrope_section; "
      "a Qwen-VL decoder needs it (e.g. [16, 24, 24])."
    )
  kw: dict[str, Any] = {"rope_theta": float(rope_theta), "mrope_section": tuple(int(s) for s in section)}
  if qwen3:
    # transformers' Qwen3-VL always interleaves (it reads no `mrope_interleaved` flag); so do we.
    bias = bool(text.pop("attention_bias", False))
    kw.update(
      mrope_interleaved=True,
      qk_norm=True,
      attention_bias=bias,
      o_proj_bias=bias,
      head_dim=int(text.pop("head_dim", 128) or 128),
    )
  else:
    text.pop("attention_bias", None)
  for f in dataclasses.fields(TextConfig):
    if f.name in text and f.name not in kw:
      kw[f.name] = _pop_typed(text, f, source)
  for required in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
    if required not in kw:
      raise ValueError(f"{source}: the text config lacks {required!r}.")
  kw.setdefault("num_key_value_heads", kw["num_attention_heads"])
  text.pop("model_type", None)
  return TextConfig(**kw), text


def _parse_vision(vision: dict, model_type: str, source: str) -> tuple[VisionConfig, dict]:
  vision = dict(vision)
  # HF aliases (`attribute_map`) and Qwen3's older names.
  for alias, name in (
    ("num_attention_heads", "num_heads"),
    ("num_hidden_layers", "depth"),
    ("in_chans", "in_channels"),
  ):
    if alias in vision and name not in vision:
      vision[name] = vision.pop(alias)
  if model_type == "qwen2_5_vl" and "hidden_size" not in vision and "embed_dim" in vision:
    vision["hidden_size"] = vision.pop("embed_dim")
  rope = vision.pop("rope_parameters", None) or {}
  kw: dict[str, Any] = {}
  if "rope_theta" in rope:
    kw["rope_theta"] = float(rope["rope_theta"])
  if model_type == "qwen3_vl":  # Qwen3VLVisionConfig's defaults; no windows.
    kw.update(
      depth=27,
      hidden_size=1152,
      hidden_act="gelu_pytorch_tanh",
      intermediate_size=4304,
      num_heads=16,
      patch_size=16,
      out_hidden_size=3584,
      num_position_embeddings=2304,
      deepstack_visual_indexes=(8, 16, 24),
      fullatt_block_indexes=(),
      window_size=0,
    )
  for f in dataclasses.fields(VisionConfig):
    if f.name in vision:
      kw[f.name] = _pop_typed(vision, f, source)
  vision.pop("model_type", None)
  return VisionConfig(**kw), vision


def load_config(path: str) -> VLConfig:
  """Reads `config.json` from a checkpoint directory (or the file itself)."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  return VLConfig.from_json_file(path)
