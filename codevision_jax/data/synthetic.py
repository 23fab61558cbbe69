"""Synthetic orientation-and-detail tasks with expert code trajectories.

A card with rendered content (a word, a number, an arrow with a caption, or a small bar chart) is
either the whole image or placed small on a large canvas with distractor shapes (so a crop is
needed), and the image is then transformed by one of rotate 90/180/270 (counter-clockwise, PIL
`rotate(D, expand=True)`), flip horizontal, flip vertical, or none. The expert thinks, calls
`code_image_tool` with code that undoes the transform and crops the card, receives the result, and
answers. Records carry `required_transforms` (a required `rotate_D` means the image was rotated by
D), `target_box` (the card in the given image's pixels) and the ground truth.

`generate(n, seed)` is deterministic: record i depends only on (seed, i).
"""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from codevision_jax.data import records as records_lib
from codevision_jax.processing import code_tool
from codevision_jax.processing.orientation import TRANSFORMS, apply_transform, transform_box

KINDS = ("word", "number", "arrow", "chart")
DATA_SOURCE = "synthetic_orientation"

_WORDS = (
  "APPLE",
  "RIVER",
  "GARDEN",
  "PLANET",
  "MARKET",
  "CASTLE",
  "FOREST",
  "BRIDGE",
  "WINTER",
  "ORANGE",
  "SILVER",
  "TICKET",
  "CAMERA",
  "PENCIL",
  "ROCKET",
  "JUNGLE",
  "HARBOR",
  "LEMON",
  "SUNSET",
  "VALLEY",
  "FALCON",
  "MUSEUM",
  "DRAGON",
  "CANDLE",
)
_CAPTIONS = ("EXIT", "GATE", "PARK", "TRAIN", "HOTEL", "BEACH", "CAFE", "PLAZA")
_DIRECTIONS = ("up", "down", "left", "right")
_INK = ((20, 20, 20), (30, 40, 120), (120, 20, 20), (10, 80, 30))
_BORDER = ((200, 40, 40), (40, 90, 200), (30, 150, 60), (220, 140, 20))

_DESCRIBE = {
  "rotate_90": (
    "The content lies on its side with its top pointing left: the image was rotated "
    "90 degrees counter-clockwise. Rotating by 270 degrees counter-clockwise "
    "undoes it."
  ),
  "rotate_180": (
    "The content is upside down: the image was rotated by 180 degrees. Rotating by 180 degrees again makes it upright."
  ),
  "rotate_270": (
    "The content lies on its side with its top pointing right: the image was "
    "rotated 270 degrees counter-clockwise. Rotating by 90 degrees "
    "counter-clockwise undoes it."
  ),
  "flip_horizontal": (
    "The text reads backwards, as in a mirror: the image was flipped left to "
    "right. Flipping it horizontally again restores it."
  ),
  "flip_vertical": (
    "The content is mirrored top to bottom: the image was flipped vertically. Flipping it vertically again restores it."
  ),
}
_UNDO_CODE = {
  "rotate_90": "{src}.rotate(270, expand=True)",
  "rotate_180": "{src}.rotate(180, expand=True)",
  "rotate_270": "{src}.rotate(90, expand=True)",
  "flip_horizontal": "{src}.transpose(Image.Transpose.FLIP_LEFT_RIGHT)",
  "flip_vertical": "{src}.transpose(Image.Transpose.FLIP_TOP_BOTTOM)",
}


def _font(size):
  return ImageFont.load_default(size=size)


def _text_card(text, rng, height):
  font = _font(int(height * 0.5))
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
  pad = height // 4
  card = Image.new("RGB", (right - left + 2 * pad, height), (250, 248, 240))
  draw = ImageDraw.Draw(card)
  ink = _INK[int(rng.integers(len(_INK)))]
  draw.text((pad - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink)
  return card


def _arrow_card(direction, caption, rng, height):
  width = int(height * 1.3)
  card = Image.new("RGB", (width, height), (250, 248, 240))
  draw = ImageDraw.Draw(card)
  ink = _INK[int(rng.integers(len(_INK)))]
  # An upward arrow in a unit box, rotated to `direction`, in the top 65% of the card.
  cx, cy, r = width / 2, height * 0.36, height * 0.28
  shape = [(0, -1), (0.6, -0.1), (0.22, -0.1), (0.22, 1), (-0.22, 1), (-0.22, -0.1), (-0.6, -0.1)]
  angle = {"up": 0, "right": 90, "down": 180, "left": 270}[direction]
  c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
  points = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in shape]
  draw.polygon(points, fill=ink)
  font = _font(int(height * 0.2))
  left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
  draw.text(((width - (right - left)) / 2 - left, height * 0.72 - top), caption, font=font, fill=ink)
  return card


def _chart_card(values, rng, height):
  n = len(values)
  bar_w, gap = height // 7, height // 10
  width = n * bar_w + (n + 1) * gap
  card = Image.new("RGB", (width, height), (250, 248, 240))
  draw = ImageDraw.Draw(card)
  font = _font(max(10, height // 10))
  base, top_space = height - height // 6, height // 4
  scale = (base - top_space) / max(values)
  for k, v in enumerate(values):
    x = gap + k * (bar_w + gap)
    color = _BORDER[(k + int(rng.integers(4))) % len(_BORDER)]
    draw.rectangle([x, base - v * scale, x + bar_w, base], fill=color)
    label = "ABCD"[k]
    left, _, right, _ = draw.textbbox((0, 0), label, font=font)
    draw.text((x + (bar_w - (right - left)) / 2 - left, base + 2), label, font=font, fill=(20, 20, 20))
    value = str(v)
    left, top, right, bottom = draw.textbbox((0, 0), value, font=font)
    y = base - v * scale - (bottom - top) - 4 - top
    draw.text((x + (bar_w - (right - left)) / 2 - left, y), value, font=font, fill=(20, 20, 20))
  draw.line([gap // 2, base, width - gap // 2, base], fill=(20, 20, 20), width=2)
  return card


def _content(kind, rng, height):
  """Renders a card -> (PIL image, question, answer)."""
  if kind == "word":
    word = _WORDS[int(rng.integers(len(_WORDS)))]
    return (_text_card(word, rng, height), "What word is written on the card?", word)
  if kind == "number":
    number = str(int(rng.integers(100, 100000)))
    return (_text_card(number, rng, height), "What number is written on the card?", number)
  if kind == "arrow":
    direction = _DIRECTIONS[int(rng.integers(4))]
    caption = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))]
    return (
      _arrow_card(direction, caption, rng, height),
      f"The sign labelled {caption} has an arrow. Which way does the arrow point when the "
      "sign is upright: up, down, left or right?",
      direction,
    )
  if kind == "chart":
    n = int(rng.integers(3, 5))
    values = [int(v) for v in rng.choice(np.arange(5, 100), size=n, replace=False)]
    best = "ABCD"[int(np.argmax(values))]
    return (
      _chart_card(values, rng, int(height * 1.6)),
      "Which bar of the chart has the largest value? Answer with its letter.",
      best,
    )
  raise ValueError(f"unknown content kind {kind!r}; expected one of {KINDS}")


def _border(card, rng):
  color = _BORDER[int(rng.integers(len(_BORDER)))]
  out = card.copy()
  ImageDraw.Draw(out).rectangle([0, 0, out.width - 1, out.height - 1], outline=color, width=3)
  return out


def _scale_to(card, target_long):
  factor = target_long / max(card.size)
  return card.resize(
    (max(1, round(card.width * factor)), max(1, round(card.height * factor))), Image.Resampling.BICUBIC
  )


def _canvas(card, rng, size):
  w, h = size
  bg = tuple(int(v) for v in rng.integers(200, 245, size=3))
  canvas = Image.new("RGB", (w, h), bg)
  draw = ImageDraw.Draw(canvas)
  for _ in range(int(rng.integers(6, 14))):
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    rw, rh = int(rng.integers(20, 120)), int(rng.integers(20, 120))
    color = tuple(int(v) for v in rng.integers(120, 230, size=3))
    if rng.random() < 0.5:
      draw.ellipse([x, y, x + rw, y + rh], fill=color)
    else:
      draw.line([x, y, x + rw, y + rh], fill=color, width=int(rng.integers(2, 6)))
  margin = 8
  x = int(rng.integers(margin, w - card.width - margin + 1))
  y = int(rng.integers(margin, h - card.height - margin + 1))
  canvas.paste(card, (x, y))
  return canvas, [x, y, x + card.width, y + card.height]


def _think(text):
  return f"<think>{text}</think>"


def _call(code, description, index):
  return {"name": code_tool.TOOL_NAME, "arguments": {"code": code, "description": description, "image_index": index}}


def make_task(seed, index, p_small=0.5, kinds=KINDS, transforms=TRANSFORMS):
  """One synthetic task with its expert trajectory -> records.Conversation (images as PNG bytes)."""
  rng = np.random.default_rng([seed, index])
  kind = kinds[int(rng.integers(len(kinds)))]
  transform = transforms[int(rng.integers(len(transforms)))]
  small = bool(rng.random() < p_small)
  card, question, answer = _content(kind, rng, height=int(rng.integers(48, 72)))
  card = _border(card, rng)
  if small:
    card = _scale_to(card, int(rng.integers(96, 160)))
    size = (int(rng.integers(512, 897)), int(rng.integers(512, 897)))
    upright, upright_box = _canvas(card, rng, size)
  else:
    card = _scale_to(card, int(rng.integers(224, 449)))
    upright, upright_box = card, [0, 0, card.width, card.height]
  given = apply_transform(upright, transform)
  target_box = transform_box(upright_box, transform, upright.size)
  required = (["crop"] if small else []) + ([transform] if transform != "none" else [])

  images = [given]
  messages = [
    {"role": "system", "content": code_tool.SYSTEM_PROMPT},
    {"role": "user", "content": f"{code_tool.IMAGE_PLACEHOLDER}\n{question}"},
  ]

  def tool_turn(think, code, description, src_index, result):
    images.append(result)
    messages.append(
      {"role": "assistant", "content": _think(think), "tool_calls": [_call(code, description, src_index)]}
    )
    messages.append({"role": "tool", "content": code_tool.tool_response_content(len(images) - 1)})

  crop_box = ", ".join(str(v) for v in target_box)
  up_box = ", ".join(str(v) for v in upright_box)
  small_note = "The card that matters is small compared with the whole image"
  if transform == "none" and not small:
    seen = "The card fills the image, is upright and reads normally, so no tool is needed."
  elif transform == "none":
    tool_turn(
      f"{small_note} and upright; I crop it at ({crop_box}) to read it closely.",
      f"result = image.crop(({crop_box}))",
      "Crop the card.",
      0,
      card,
    )
  elif not small:
    tool_turn(
      _DESCRIBE[transform],
      "from PIL import Image\nresult = " + _UNDO_CODE[transform].format(src="image"),
      "Undo the orientation change.",
      0,
      card,
    )
  elif rng.random() < 0.5:
    tool_turn(
      f"{small_note}, at ({crop_box}). {_DESCRIBE[transform]} I crop it and fix the orientation in one step.",
      (
        f"from PIL import Image\nregion = image.crop(({crop_box}))\n"
        f"result = {_UNDO_CODE[transform].format(src='region')}"
      ),
      "Crop the card and undo the orientation change.",
      0,
      card,
    )
  else:
    tool_turn(
      f"{_DESCRIBE[transform]} I fix the orientation first.",
      "from PIL import Image\nresult = " + _UNDO_CODE[transform].format(src="image"),
      "Undo the orientation change of the whole image.",
      0,
      upright,
    )
    tool_turn(
      f"The image is upright now. {small_note}, at ({up_box}) in this image; I crop it.",
      f"result = image.crop(({up_box}))",
      "Crop the card from the upright image.",
      1,
      card,
    )
  if len(images) > 1:
    seen = "The processed image shows the card upright and large enough to read."
  final = _think(f"{seen} The answer is {answer}.")
  messages.append({"role": "assistant", "content": f"{final}\n<answer>{answer}</answer>"})
  return records_lib.Conversation(
    messages=messages,
    images=[records_lib.png_bytes(im, compress_level=1) for im in images],  # Held in memory: fast.
    tools=[code_tool.CODE_IMAGE_TOOL],
    ground_truth=answer,
    required_transforms=required,
    target_box=target_box,
    question=question,
    answer=answer,
    data_source=DATA_SOURCE,
    extra={
      "transform": transform,
      "content": kind,
      "upright_box": upright_box,
      "image_size": list(given.size),
      "seed": seed,
      "index": index,
    },
  )


def generate(n, seed, p_small=0.5, kinds=KINDS, transforms=TRANSFORMS):
  """`n` synthetic tasks (list of records.Conversation); record i depends only on (seed, i)."""
  return [make_task(seed, i, p_small=p_small, kinds=kinds, transforms=transforms) for i in range(n)]
