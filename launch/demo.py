"""python -m launch.demo  (what `make demo` runs)

The embedded default end to end on CPU, in about a minute: build the tiny Qwen2.5-VL with random
weights, export it as an HF checkpoint, load it back with `cvj.load_hf`, preprocess a generated
image, and run a forward pass, printing each step.
"""

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

import codevision_jax as cvj
from codevision_jax.models import build_model, presets

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "where to write the checkpoint (default: a temporary directory)")


def demo_image() -> Image.Image:
  """A 300x200 picture with a word on it, rotated as CodeVision's tasks are."""
  img = Image.new("RGB", (300, 200), (235, 230, 220))
  draw = ImageDraw.Draw(img)
  draw.rectangle([20, 20, 280, 180], outline=(40, 40, 160), width=4)
  draw.text((90, 85), "CODEVISION", fill=(10, 10, 10))
  return img.rotate(90, expand=True)


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="cvj-demo-")
  t0 = time.perf_counter()
  config = presets.qwen2_5_vl_tiny()
  model = build_model(config, seed=0)
  n_params = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(
      __import__("flax").nnx.state(model)))
  print(f"1. built a random tiny Qwen2.5-VL: {n_params / 1e6:.2f}M parameters "
        f"({config.text.num_hidden_layers} decoder layers, {config.vision.depth} vision blocks)")

  path = cvj.save_hf(model, os.path.join(workdir, "tiny-qwen2_5_vl"))
  files = sorted(os.listdir(path))
  print(f"2. exported an HF checkpoint to {path}: {', '.join(files)}")

  loaded = cvj.load_hf(path, dtype="float32")
  print(f"3. loaded it back with cvj.load_hf ({loaded.config.model_type}, float32)")

  image = demo_image()
  pixel_values, grid = cvj.preprocess_images([image], min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
  n_image_tokens = int(grid.prod()) // config.vision.spatial_merge_size ** 2
  print(f"4. preprocessed a {image.size[0]}x{image.size[1]} image: pixel_values {pixel_values.shape}, "
        f"grid (t, h, w) = {grid[0].tolist()}, {n_image_tokens} image tokens")

  rng = np.random.default_rng(0)
  text = list(rng.integers(0, config.image_token_id - 10, 12))
  input_ids = np.asarray([text[:6] + [config.vision_start_token_id] + [config.image_token_id] * n_image_tokens
                          + [config.vision_end_token_id] + text[6:]])
  logits = np.asarray(loaded(input_ids, pixel_values=pixel_values, image_grid_thw=grid))
  same = np.asarray(model(input_ids, pixel_values=pixel_values, image_grid_thw=grid))
  print(f"5. forward pass on {input_ids.shape[1]} tokens: logits {logits.shape}, "
        f"max |loaded - original| = {np.abs(logits - same).max():.2e}")
  print(f"done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
  app.run(main)
