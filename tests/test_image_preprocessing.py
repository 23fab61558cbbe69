"""Image preprocessing equals transformers' Qwen2VLImageProcessor (PIL backend), bit for bit."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_qwen2_vl

import codevision_jax as cvj
from codevision_jax.processing import image as image_lib

# (width, height): tiny, odd, extreme aspect ratios (3x600 is exactly the 200 limit), square.
SIZES = [(1, 1), (3, 600), (600, 3), (999, 37), (57, 913), (448, 448), (33, 17), (1, 29)]
MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "RGBX"]

SMALL_QWEN2 = image_lib.ImageSettings(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
SMALL_QWEN3 = image_lib.ImageSettings.for_model_type("qwen3_vl", min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 64)


def make_image(width, height, mode, seed=0):
  """Noise plus gradients (and a varying alpha), converted to `mode`."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  grad = np.stack(
    [
      255 * x / max(width - 1, 1),
      255 * y / max(height - 1, 1),
      127 * (x + y) / max(width + height - 2, 1),
      255 * (x % 7) / 6,
    ],
    axis=-1,
  )
  noise = rng.normal(0, 40, (height, width, 4))
  rgba = Image.fromarray(np.clip(grad + noise, 0, 255).astype(np.uint8), "RGBA")
  if mode == "P":
    return rgba.convert("RGB").quantize(colors=64)
  return rgba.convert(mode)


def reference(settings):
  return hf_qwen2_vl.Qwen2VLImageProcessorPil(
    size={"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels},
    patch_size=settings.patch_size,
    merge_size=settings.merge_size,
    temporal_patch_size=settings.temporal_patch_size,
    image_mean=list(settings.image_mean),
    image_std=list(settings.image_std),
  )


def assert_same_as_transformers(images, settings):
  want = reference(settings)(images, return_tensors="np")
  pv, thw = cvj.preprocess_images(images, **settings.as_kwargs())
  assert pv.dtype == np.float32 and thw.dtype == np.int64
  np.testing.assert_array_equal(thw, want["image_grid_thw"])
  assert pv.shape == want["pixel_values"].shape
  np.testing.assert_array_equal(pv, want["pixel_values"])  # bit-identical


@pytest.mark.parametrize("settings", [SMALL_QWEN2, SMALL_QWEN3], ids=["qwen2", "qwen3"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_transformers(settings, mode):
  images = [make_image(w, h, mode, seed=i) for i, (w, h) in enumerate(SIZES)]
  assert_same_as_transformers(images, settings)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_released_presets_match_transformers(model_type):
  settings = image_lib.ImageSettings.for_model_type(model_type)
  images = [make_image(w, h, "RGB", seed=w) for w, h in [(100, 60), (640, 31), (7, 400)]]
  assert_same_as_transformers(images, settings)


def test_transparency_info_is_composited_on_white():
  """P and L images with a tRNS transparency entry (no alpha band) composite like transformers."""
  p_image = make_image(61, 45, "P")
  p_image.info["transparency"] = 3
  l_image = make_image(45, 61, "L")
  l_image.info["transparency"] = 128
  assert_same_as_transformers([p_image, l_image], SMALL_QWEN2)
  assert_same_as_transformers([p_image, l_image], SMALL_QWEN3)


def test_single_image_and_empty_list():
  image = make_image(90, 50, "RGB")
  pv, thw = cvj.preprocess_images(image, **SMALL_QWEN2.as_kwargs())
  pv_list, thw_list = cvj.preprocess_images([image], **SMALL_QWEN2.as_kwargs())
  np.testing.assert_array_equal(pv, pv_list)
  np.testing.assert_array_equal(thw, thw_list)
  pv, thw = cvj.preprocess_images([], **SMALL_QWEN3.as_kwargs())
  assert pv.shape == (0, 3 * 2 * 16 * 16) and thw.shape == (0, 3)


def test_smart_resize_matches_transformers():
  for factor, min_pixels, max_pixels in [(28, 3136, 28 * 28 * 64), (32, 4096, 32 * 32 * 1024)]:
    for height in [1, 2, 3, 13, 27, 28, 29, 55, 100, 333, 599]:
      for width in [1, 3, 14, 28, 57, 200, 913, 999]:
        if max(height, width) / min(height, width) > 200:
          continue
        assert cvj.smart_resize(height, width, factor, min_pixels, max_pixels) == (
          hf_qwen2_vl.smart_resize(height, width, factor, min_pixels, max_pixels)
        )
  with pytest.raises(ValueError, match="aspect ratio"):
    cvj.smart_resize(3, 1000)


def test_num_image_tokens():
  settings = SMALL_QWEN3
  images = [make_image(w, h, "RGB") for w, h in [(100, 60), (999, 37), (1, 1)]]
  _, thw = cvj.preprocess_images(images, **settings.as_kwargs())
  tokens = image_lib.num_image_tokens(thw, settings.merge_size)
  ref = reference(settings)
  want = [ref.get_number_of_image_patches(im.height, im.width) // 4 for im in images]
  assert tokens.tolist() == want
  assert image_lib.num_image_tokens(thw[0], 2) == want[0]
  assert image_lib.num_image_tokens([1, 4, 6], merge_size=2) == 6
  assert tuple(image_lib.num_image_tokens([[1, 4, 6], [1, 8, 8]])) == (6, 16)
  assert tuple(image_lib.num_image_tokens(np.array([[1, 6, 6]]), merge_size=1)) == (36,)


def test_settings_from_preprocessor_config(tmp_path):
  qwen3_config = {  # Qwen3-VL's released preprocessor_config.json
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
  }
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(qwen3_config))
  assert image_lib.ImageSettings.from_preprocessor_config(tmp_path) == (
    image_lib.ImageSettings.for_model_type("qwen3_vl")
  )
  qwen25_config = {  # Qwen2.5-VL's: min/max_pixels at the top level
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "do_convert_rgb": True,
  }
  assert image_lib.ImageSettings.from_preprocessor_config(qwen25_config) == (
    image_lib.ImageSettings.for_model_type("qwen2_5_vl")
  )
  with pytest.raises(ValueError, match="resample=2"):
    image_lib.ImageSettings.from_preprocessor_config(dict(qwen25_config, resample=2))
  with pytest.raises(ValueError, match="known"):
    image_lib.ImageSettings.for_model_type("llava")


def error_for(images, settings=SMALL_QWEN2, **overrides):
  with pytest.raises(image_lib.ImagePreprocessingError) as info:
    cvj.preprocess_images(images, **dict(settings.as_kwargs(), **overrides))
  return str(info.value)


def test_errors_name_the_image_and_the_reason():
  good = make_image(40, 30, "RGB")
  message = error_for([good, Image.new("RGB", (0, 5))])
  assert "image 1" in message and "zero size" in message
  message = error_for([good, good, Image.new("I;16", (20, 20))])
  assert "image 2" in message and "unsupported mode 'I;16'" in message
  message = error_for([make_image(10, 10, "RGB").convert("F")])
  assert "image 0" in message and "unsupported mode 'F'" in message
  message = error_for([good, make_image(1000, 3, "RGB")])
  assert "image 1" in message and "aspect ratio" in message and "200" in message
  message = error_for([good, np.zeros((30, 40, 3), np.uint8)])
  assert "image 1" in message and "PIL" in message
  # 3x600 fits only at 28x812 = 22736 pixels, over this 6272-pixel budget (transformers would
  # silently exceed it).
  message = error_for([good, make_image(600, 3, "RGB")], max_pixels=28 * 28 * 8)
  assert "image 1" in message and "budget cannot fit" in message and "max_pixels=6272" in message


def test_errors_for_settings_that_cannot_fit():
  good = make_image(40, 30, "RGB")
  assert "min_pixels=5000 > max_pixels=4000" in error_for([good], min_pixels=5000, max_pixels=4000)
  assert "below the smallest image" in error_for([good], min_pixels=100, max_pixels=28 * 28 - 1)
  assert "patch_size must be a positive int" in error_for([good], patch_size=0)
