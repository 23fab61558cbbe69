"""Qwen-VL image preprocessing: smart resize, rescale, normalise, patchify.

Numpy + PIL reimplementation of transformers' `Qwen2VLImageProcessorPil` (the processor
class that Qwen2-VL, Qwen2.5-VL and Qwen3-VL all use; they differ only in settings). For
the same settings the outputs are bit-identical to transformers' PIL backend:

    pv, thw = preprocess_images([img, ...], min_pixels=3136, max_pixels=12845056)
    settings = ImageSettings.for_model_type("qwen3_vl")       # or .from_preprocessor_config(path)
    pv, thw = preprocess_images(images, **settings.as_kwargs())
    tokens = num_image_tokens(thw, settings.merge_size)        # placeholder tokens per image

Pipeline per image (the order transformers uses): composite transparency onto white and
convert to RGB; `smart_resize` to multiples of `patch_size * merge_size` inside the pixel
budget; PIL bicubic resize on uint8; rescale (uint8 -> float64 * 1/255 -> float32); normalise
in float32 ((x - mean) / std); repeat `temporal_patch_size` times; flatten patches in the order
(grid_h/m, grid_w/m, m, m) rows by (C, T, P, P) columns.

Note: hub configs name `Qwen2VLImageProcessorFast` (the torchvision backend), which
transformers uses when torchvision is installed; its bicubic resize is not PIL's, so its pixel
values differ slightly from these (and from transformers' PIL backend). Grids are the same.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

# PIL modes with 8-bit channels that transformers' `convert_to_rgb` turns into RGB faithfully.
# High-bit-depth modes (I, I;16*, F) are refused: PIL's conversion to RGB clips them to 0..255
# instead of rescaling, which silently destroys the image.
SUPPORTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")

_MAX_ASPECT_RATIO = 200
_RESCALE_FACTOR = 1 / 255


class ImagePreprocessingError(ValueError):
  """An image, or the settings, cannot be preprocessed; the message says which and why."""


def smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
  """Target (height, width): multiples of `factor`, about `min_pixels..max_pixels`, same aspect.

  Same arithmetic as transformers' `qwen2_vl.image_processing_qwen2_vl.smart_resize`, including
  its ValueError for aspect ratios above 200. Like transformers, it can return more than
  `max_pixels` when one side is clamped up to `factor`, or when rounding up to reach
  `min_pixels` overshoots; `preprocess_images` rejects those cases.
  """
  if max(height, width) / min(height, width) > _MAX_ASPECT_RATIO:
    raise ValueError(
      f"absolute aspect ratio must be smaller than {_MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width)}"
    )
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def num_image_tokens(grid_thw, merge_size=2):
  """Placeholder tokens per image: t * h * w / merge_size**2.

  `grid_thw` is one (t, h, w) triple (returns an int) or an [N, 3] array (returns int64 [N]).
  """
  thw = np.asarray(grid_thw, dtype=np.int64)
  if thw.shape[-1:] != (3,) or thw.ndim > 2:
    raise ValueError(f"grid_thw must have shape [3] or [N, 3], got {thw.shape}")
  patches = np.prod(thw, axis=-1)
  if np.any(patches % (merge_size * merge_size)):
    raise ValueError(f"grid_thw {thw.tolist()} is not divisible by merge_size**2 = {merge_size**2}")
  tokens = patches // (merge_size * merge_size)
  return int(tokens) if thw.ndim == 1 else tokens


@dataclasses.dataclass(frozen=True)
class ImageSettings:
  """The preprocessing settings of one model family; `as_kwargs()` feeds `preprocess_images`."""

  min_pixels: int
  max_pixels: int
  patch_size: int = 14
  merge_size: int = 2
  temporal_patch_size: int = 2
  image_mean: tuple = OPENAI_CLIP_MEAN
  image_std: tuple = OPENAI_CLIP_STD

  @property
  def max_frame_patches(self) -> int:
    """The most patches one image frame can have (max_pixels over the patch area)."""
    return self.max_pixels // self.patch_size**2

  @property
  def factor(self):
    return self.patch_size * self.merge_size

  @classmethod
  def for_model_type(cls, model_type, **overrides):
    """Released checkpoints' settings for a config.json `model_type`; `overrides` replace fields."""
    if model_type not in _PRESETS:
      raise ValueError(f"no image settings for model_type {model_type!r}; known: {sorted(_PRESETS)}")
    return dataclasses.replace(_PRESETS[model_type], **overrides)

  @classmethod
  def from_preprocessor_config(cls, config):
    """Settings from a preprocessor_config.json: a dict, the file's path, or its model directory.

    `min_pixels`/`max_pixels` win over `size` (as in transformers). Options this module does not
    implement (do_resize/do_rescale/do_normalize/do_convert_rgb false, another resample filter or
    rescale factor) raise instead of being ignored.
    """
    source = "preprocessor config dict"
    if not isinstance(config, Mapping):
      path = os.fspath(config)
      if os.path.isdir(path):
        path = os.path.join(path, "preprocessor_config.json")
      source = path
      with open(path) as f:
        config = json.load(f)
    expected = {
      "do_resize": True,
      "do_rescale": True,
      "do_normalize": True,
      "do_convert_rgb": True,
      "resample": 3,
      "rescale_factor": _RESCALE_FACTOR,
    }
    for key, want in expected.items():
      if key in config and config[key] is not None and config[key] != want:
        raise ValueError(f"{source}: {key}={config[key]!r} is not supported (only {want!r})")
    size = dict(config.get("size") or {})
    min_pixels = config.get("min_pixels") or size.get("shortest_edge")
    max_pixels = config.get("max_pixels") or size.get("longest_edge")
    if min_pixels is None or max_pixels is None:
      raise ValueError(f"{source}: needs min_pixels/max_pixels or size.shortest_edge/longest_edge")
    return cls(
      min_pixels=int(min_pixels),
      max_pixels=int(max_pixels),
      patch_size=int(config.get("patch_size", cls.patch_size)),
      merge_size=int(config.get("merge_size", cls.merge_size)),
      temporal_patch_size=int(config.get("temporal_patch_size", cls.temporal_patch_size)),
      image_mean=tuple(float(x) for x in config.get("image_mean", cls.image_mean)),
      image_std=tuple(float(x) for x in config.get("image_std", cls.image_std)),
    )

  def as_kwargs(self):
    return dataclasses.asdict(self)

  def preprocess(self, images):
    return preprocess_images(images, **self.as_kwargs())


_QWEN2_VL = ImageSettings(min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
_QWEN3_VL = ImageSettings(
  min_pixels=256 * 256, max_pixels=4096 * 4096, patch_size=16, image_mean=HALF_MEAN, image_std=HALF_STD
)
_PRESETS = {
  "qwen2_vl": _QWEN2_VL,
  "qwen2_5_vl": _QWEN2_VL,
  "qwen3_vl": _QWEN3_VL,
  "qwen3_vl_moe": _QWEN3_VL,
}


def _check_settings(min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size, image_mean, image_std):
  for name, value in (
    ("patch_size", patch_size),
    ("merge_size", merge_size),
    ("temporal_patch_size", temporal_patch_size),
    ("min_pixels", min_pixels),
    ("max_pixels", max_pixels),
  ):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ImagePreprocessingError(f"{name} must be a positive int, got {value!r}")
  factor = patch_size * merge_size
  if min_pixels > max_pixels:
    raise ImagePreprocessingError(f"pixel budget cannot fit: min_pixels={min_pixels} > max_pixels={max_pixels}")
  if max_pixels < factor * factor:
    raise ImagePreprocessingError(
      f"pixel budget cannot fit: max_pixels={max_pixels} is below the smallest image, "
      f"{factor}x{factor}={factor * factor} pixels (patch_size*merge_size={factor}); raise it"
    )
  for name, value in (("image_mean", image_mean), ("image_std", image_std)):
    if len(value) != 3:
      raise ImagePreprocessingError(f"{name} needs 3 values (R, G, B), got {value!r}")
  if any(s == 0 for s in image_std):
    raise ImagePreprocessingError(f"image_std must be non-zero, got {image_std!r}")


def _value_table(image_mean, image_std):
  """float32 [3, 256]: each uint8 value rescaled and normalised exactly as transformers does."""
  rescaled = np.arange(256, dtype=np.uint8).astype(np.float64) * _RESCALE_FACTOR
  rescaled = rescaled.astype(np.float32)
  mean = np.array(image_mean, dtype=np.float32)
  std = np.array(image_std, dtype=np.float32)
  return (rescaled[None, :] - mean[:, None]) / std[:, None]


def _to_rgb(image):
  """transformers' `convert_to_rgb`: transparency composited onto white, then RGB."""
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")
  return image.convert("RGB")


def _target_size(index, image, factor, min_pixels, max_pixels):
  """Checked smart-resize target (height, width) of image `index`."""
  if not isinstance(image, Image.Image):
    raise ImagePreprocessingError(
      f"image {index}: expected a PIL.Image.Image, got {type(image).__name__} (wrap arrays with PIL.Image.fromarray)"
    )
  width, height = image.size
  if width == 0 or height == 0:
    raise ImagePreprocessingError(f"image {index}: has zero size (width={width}, height={height})")
  if image.mode not in SUPPORTED_MODES:
    raise ImagePreprocessingError(
      f"image {index}: unsupported mode {image.mode!r}; supported modes are {SUPPORTED_MODES} "
      "(convert it to 8-bit RGB first, e.g. rescale 16-bit or float data to 0..255)"
    )
  ratio = max(height, width) / min(height, width)
  if ratio > _MAX_ASPECT_RATIO:
    raise ImagePreprocessingError(
      f"image {index}: aspect ratio {ratio:.4g} ({width}x{height} WxH) is above "
      f"{_MAX_ASPECT_RATIO}, the most Qwen-VL preprocessing accepts; crop or pad it"
    )
  h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
  if h * w > max_pixels:
    raise ImagePreprocessingError(
      f"image {index}: pixel budget cannot fit: {width}x{height} (WxH) resizes to {w}x{h} = "
      f"{h * w} pixels > max_pixels={max_pixels} (sides are multiples of {factor}, aspect "
      f"ratio {ratio:.4g}, min_pixels={min_pixels}); raise max_pixels or crop the image"
    )
  return h, w


def _patchify(image, patch_size, merge_size, temporal_patch_size):
  """[C, H, W] -> [grid_h * grid_w, C * T * P * P], transformers' patch order."""
  channels, height, width = image.shape
  grid_h, grid_w = height // patch_size, width // patch_size
  patches = image.reshape(
    channels, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
  )
  patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh, gw, mh, mw, C, ph, pw)
  patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], temporal_patch_size, *patches.shape[5:]))
  return patches.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)


def value_table(image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD) -> np.ndarray:
  """float32 [3, 256]: the value `preprocess_images` gives each uint8 value of each channel (its
  `as_uint8` patches' column c holds channel c // (temporal_patch_size * patch_size^2))."""
  return _value_table(tuple(image_mean), tuple(image_std))


def preprocess_images(
  images,
  min_pixels,
  max_pixels,
  patch_size=14,
  merge_size=2,
  temporal_patch_size=2,
  image_mean=OPENAI_CLIP_MEAN,
  image_std=OPENAI_CLIP_STD,
  as_uint8=False,
):
  """PIL images -> (pixel_values float32 [patches, 3*T*P*P], image_grid_thw int64 [images, 3]).
  With `as_uint8`, pixel_values are the resized uint8 values in the same layout, a quarter of
  the bytes; `value_table` maps them to the float32 ones (on device, e.g.).

  Same values and layout as transformers' Qwen2VLImageProcessor (PIL backend) with
  `size={"shortest_edge": min_pixels, "longest_edge": max_pixels}` and the other arguments
  equal. `images` is a PIL image or a sequence of them, in any of `SUPPORTED_MODES`. Raises
  `ImagePreprocessingError` (a ValueError) naming the image index and the reason for a non-PIL
  input, a zero-size image, an unsupported mode, an aspect ratio above 200, or a budget the image
  cannot fit into; and for settings that cannot work (min_pixels > max_pixels, max_pixels below
  (patch_size*merge_size)**2). An empty sequence gives [0, 3*T*P*P] and [0, 3] arrays.
  """
  if isinstance(images, Image.Image):
    images = [images]
  elif not isinstance(images, Sequence):
    images = list(images)
  image_mean, image_std = tuple(image_mean), tuple(image_std)
  _check_settings(min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size, image_mean, image_std)
  factor = patch_size * merge_size
  sizes = [_target_size(i, image, factor, min_pixels, max_pixels) for i, image in enumerate(images)]

  table = _value_table(image_mean, image_std)
  channel = np.arange(3)[:, None, None]
  all_patches, grids = [], []
  for image, (height, width) in zip(images, sizes):
    resized = _to_rgb(image).resize((width, height), resample=Image.Resampling.BICUBIC)
    values = np.asarray(resized).transpose(2, 0, 1)  # uint8 [3, H, W]
    values = values if as_uint8 else table[channel, values]  # float32 (`value_table`)
    all_patches.append(_patchify(values, patch_size, merge_size, temporal_patch_size))
    grids.append((1, height // patch_size, width // patch_size))

  patch_dim = 3 * temporal_patch_size * patch_size * patch_size
  if not all_patches:
    return np.zeros((0, patch_dim), np.uint8 if as_uint8 else np.float32), np.zeros((0, 3), np.int64)
  return np.concatenate(all_patches, axis=0), np.array(grids, dtype=np.int64)
