"""executor/png.py: lossless for every mode a result may have, and a real PNG."""

import io

import numpy as np
import pytest
from PIL import Image

from codevision_jax.processing import png


def _image(mode: str) -> Image.Image:
  rng = np.random.default_rng(0)
  # Smooth regions plus noise and edges: exercises the row filter and the run-length strategy.
  y, x = np.mgrid[0:37, 0:53]
  base = np.stack([x * 4, y * 6, (x + y) * 2, 255 - x], -1) + rng.integers(0, 9, (37, 53, 4))
  base[10:20, 5:40] = (200, 30, 90, 128)
  rgba = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGBA")
  if mode == "I;16":
    return Image.fromarray((np.asarray(rgba.convert("L")).astype(np.uint16) * 257))
  return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1", "LA", "I;16"])
@pytest.mark.parametrize("level", [0, 1, 6])
def test_round_trip_is_exact(mode, level):
  im = _image(mode)
  data = png.encode(im, level)
  assert data.startswith(b"\x89PNG\r\n\x1a\n")
  back = Image.open(io.BytesIO(data))
  back.load()
  assert back.size == im.size
  if mode in ("RGB", "RGBA", "L", "P", "1", "LA"):
    assert back.mode == im.mode
  assert np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(im.convert("RGBA")))
  if mode == "I;16":
    assert np.array_equal(np.asarray(back).astype(np.uint16), np.asarray(im))


def test_channel_order_survives():
  im = Image.new("RGB", (4, 3), (255, 0, 0))
  back = Image.open(io.BytesIO(png.encode(im))).convert("RGB")
  assert back.getpixel((1, 1)) == (255, 0, 0)


def test_bad_level():
  with pytest.raises(ValueError, match="0-9"):
    png.encode(Image.new("L", (2, 2)), 12)
