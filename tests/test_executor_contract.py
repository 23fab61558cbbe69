"""The code contract of the executor service, against the real service over HTTP."""

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from codevision_jax.execution.ops import core_ops, crop_boxes
from executor.local import local_service


@pytest.fixture(scope="module")
def service():
  with local_service(workers=2) as s:
    yield s


def png(im: Image.Image) -> bytes:
  buf = io.BytesIO()
  im.save(buf, "PNG")
  return buf.getvalue()


def b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


def gradient(w: int = 120, h: int = 80) -> Image.Image:
  """An RGB image whose pixel (x, y) is (x, y, 7): positions can be read back from colours."""
  x, y = np.meshgrid(np.arange(w), np.arange(h))
  return Image.fromarray(np.stack([x, y, np.full_like(x, 7)], -1).astype(np.uint8))


GRAD = gradient()
GRAD_PNG = png(GRAD)


def post(service, body: dict, path: str = "/v1/execute"):
  req = urllib.request.Request(
    service.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
  )
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      return r.status, json.load(r)
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read() or b"{}")


def run(service, code: str, images=(GRAD_PNG,), image_index: int = 0, **extra) -> dict:
  status, out = post(service, {"code": code, "images": [b64(i) for i in images], "image_index": image_index, **extra})
  assert status == 200, out
  out["pil"] = [Image.open(io.BytesIO(base64.b64decode(s))) for s in out["images"]]
  return out


def test_crop_returns_the_region_and_traces_its_box(service):
  out = run(service, "result = image.crop((10, 20, 50, 60))")
  assert out["ok"] and out["error"] is None
  (im,) = out["pil"]
  assert im.size == (40, 40)
  assert im.getpixel((0, 0)) == (10, 20, 7)
  assert out["ops"] == [{"op": "crop", "box": [10, 20, 50, 60], "source": 0, "fn": "Image.crop"}]
  assert out["image_refs"][0].startswith("sha256:")


def test_rotate_with_expand_matches_pil(service):
  out = run(service, "result = img.rotate(30, expand=True)")
  assert out["pil"][0].size == GRAD.rotate(30, expand=True).size
  assert out["ops"][0] == {"op": "rotate", "angle": 30, "expand": True, "fn": "Image.rotate"}
  out = run(service, "result = image.rotate(90, expand=True)")
  assert np.array_equal(np.asarray(out["pil"][0]), np.asarray(GRAD.rotate(90, expand=True)))
  assert core_ops(out["ops"]) == {"rotate_90"}


def test_flip_paths(service):
  want = np.asarray(GRAD)[:, ::-1]
  for code in (
    "result = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)",
    "result = ImageOps.mirror(image)",
    "result = np.fliplr(np.array(image))",
    "result = cv2.flip(np.asarray(image), 1)",
    "result = np.asarray(image)[:, ::-1]",
  ):
    out = run(service, code)
    assert out["ok"], (code, out["error"])
    assert np.array_equal(np.asarray(out["pil"][0]), want), code
    assert core_ops(out["ops"]) == {"flip_horizontal"}, (code, out["ops"])
  out = run(service, "result = ImageOps.flip(image)")
  assert core_ops(out["ops"]) == {"flip_vertical"}


def test_enhance_filter_and_draw(service):
  code = """
bright = ImageEnhance.Brightness(image).enhance(1.5)
blurred = bright.filter(ImageFilter.GaussianBlur(radius=2))
draw = ImageDraw.Draw(blurred)
draw.rectangle((0, 0, 9, 9), fill=(255, 0, 0))
result = blurred
"""
  out = run(service, code)
  assert out["ok"], out["error"]
  assert out["pil"][0].getpixel((5, 5)) == (255, 0, 0)
  kinds = [op["op"] for op in out["ops"]]
  assert kinds == ["enhance", "filter", "draw"]
  assert out["ops"][0]["kind"] == "Brightness" and out["ops"][0]["factor"] == 1.5
  assert out["ops"][1]["filter"] == "GaussianBlur" and out["ops"][1]["radius"] == 2
  assert out["ops"][2]["shape"] == "rectangle"


def test_cv2_and_numpy_paths(service):
  code = """
import cv2
arr = np.asarray(image)
gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
rot = cv2.rotate(gray, cv2.ROTATE_90_CLOCKWISE)
result = rot
"""
  out = run(service, code)
  assert out["ok"], out["error"]
  im = out["pil"][0]
  assert im.mode == "L" and im.size == (80, 120)
  assert [op.get("fn") for op in out["ops"]] == ["cv2.cvtColor", "cv2.rotate"]
  assert core_ops(out["ops"]) == {"rotate_270"}  # clockwise 90 = counter-clockwise 270
  out = run(service, "result = np.asarray(image).astype(np.float32) / 255.0")
  assert out["ops"] == []  # converting the result is not an operation of the code
  assert np.array_equal(np.asarray(out["pil"][0]), np.asarray(GRAD))  # float in [0, 1] -> uint8
  out = run(
    service, "chw = np.transpose(np.asarray(image), (2, 0, 1))\nresult = np.transpose(chw, (1, 2, 0))"
  )  # layout changes, not geometry
  assert [op["op"] for op in out["ops"]] == ["numpy", "numpy"]
  assert core_ops(out["ops"]) == set()
  out = run(service, "result = np.rot90(np.asarray(image), 2)")
  assert core_ops(out["ops"]) == {"rotate_180"}
  assert np.array_equal(np.asarray(out["pil"][0]), np.asarray(GRAD)[::-1, ::-1])


def test_list_results_output_name_and_image_index(service):
  red, blue = png(Image.new("RGB", (8, 8), "red")), png(Image.new("RGB", (6, 6), "blue"))
  out = run(service, "result = [image, images[0], images[1].resize((3, 3))]", images=(red, blue), image_index=1)
  assert [im.size for im in out["pil"]] == [(6, 6), (8, 8), (3, 3)]
  assert out["pil"][0].getpixel((0, 0)) == (0, 0, 255)
  out = run(service, "output = img.convert('L')", images=(red, blue), image_index=0)
  assert out["pil"][0].mode == "L" and out["pil"][0].size == (8, 8)
  out = run(service, "result = image", images=(red, blue), image_index=5)
  assert not out["ok"] and out["error"]["type"] == "IndexError"
  assert "out of range" in out["error"]["message"]


def test_stdout_is_captured_and_text_only_calls_are_ok(service):
  out = run(service, "print('size', image.size)\nprint('done')")
  assert out["ok"] and out["images"] == []
  assert out["stdout"] == "size (120, 80)\ndone\n"
  out = run(service, "x = 1")
  assert not out["ok"] and out["error"]["type"] == "NoResult"


@pytest.mark.parametrize(
  "code,kind,line,needle",
  [
    ("a = 1\nb = 0\nc = a / b\nresult = image", "ZeroDivisionError", 3, "division by zero"),
    ("x = 1\nresult = image.crop((10, 10, 5, 5))\n", "ValueError", 2, "right"),
    ("def f():\n  return undefined_name\n\nresult = f()", "NameError", 2, "undefined_name"),
    ("x = (1,\ny = 2\n", "SyntaxError", 1, None),
    ("import numpy as np\nresult = np.zeros((2, 2, 2, 2))", "ResultError", None, "HxW"),
    ("result = 'a string'", "ResultError", None, "str"),
    ("import PIL.Image\nresult = PIL.Image.open('/nonexistent.png')", "FileNotFoundError", 2, None),
  ],
)
def test_errors_are_readable_with_the_right_line(service, code, kind, line, needle):
  out = run(service, code)
  assert not out["ok"]
  err = out["error"]
  assert err["type"] == kind, err
  assert err["line"] == line, err
  if line is not None:
    assert f"line {line}" in err["message"]
  if needle:
    assert needle in err["message"]
  for internal in ("site-packages", "executor/", ".venv", "Traceback"):
    assert internal not in err["message"], err


def test_ops_compose_boxes_into_original_coordinates(service):
  # Crop of a crop: offsets add up.
  out = run(service, "result = image.crop((10, 10, 100, 70)).crop((5, 5, 25, 15))")
  assert crop_boxes(out["ops"])[-1] == [15, 15, 35, 25]
  assert out["pil"][0].getpixel((0, 0)) == (15, 15, 7)
  # Crop after a 2x downscale: box scales back.
  out = run(service, "small = image.resize((60, 40))\nresult = small.crop((10, 5, 20, 15))")
  assert crop_boxes(out["ops"]) == [[20, 10, 40, 30]]
  # Thumbnail (in place) then crop: one resize op, box scaled back.
  out = run(service, "t = image.copy()\nt.thumbnail((60, 60))\nresult = t.crop((0, 0, 30, 20))")
  assert [op["op"] for op in out["ops"]] == ["resize", "crop"]
  assert crop_boxes(out["ops"]) == [[0, 0, 60, 40]]
  # Crop after rotating 90 degrees: the box maps back through the rotation.
  code = "r = image.rotate(90, expand=True)\nresult = r.crop((10, 20, 30, 50))"
  out = run(service, code)
  box = crop_boxes(out["ops"])[0]
  got = np.asarray(out["pil"][0])
  xs, ys = got[..., 0], got[..., 1]  # the gradient tells which source pixels were kept
  assert box == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
  assert core_ops(out["ops"]) == {"crop", "rotate_90"}
  # Numpy slicing of a flipped array, then PIL.
  code = "a = np.asarray(image.transpose(Image.Transpose.FLIP_TOP_BOTTOM))\nresult = Image.fromarray(a[10:30, 40:100])"
  out = run(service, code)
  got = np.asarray(out["pil"][0])
  assert crop_boxes(out["ops"])[0] == [
    int(got[..., 0].min()),
    int(got[..., 1].min()),
    int(got[..., 0].max()) + 1,
    int(got[..., 1].max()) + 1,
  ]
  assert core_ops(out["ops"]) == {"crop", "flip_vertical"}


@pytest.mark.parametrize(
  "code",
  [
    "result = image.rotate(90, expand=True)",
    "result = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((5, 10, 45, 50))",
    "result = image.crop((10, 10, 100, 70)).rotate(270, expand=True).crop((3, 4, 30, 60))",
    "result = Image.fromarray(np.asarray(image)[::-1, 20:80])",
    "result = image.resize((240, 160))",
  ],
)
def test_result_maps_take_result_pixels_to_input_pixels(service, code):
  """Each result image's map sends the centre of every result pixel to the input pixel it shows
  (the gradient's colours name the input position)."""
  out = run(service, code)
  (m,) = out["result_maps"]
  assert m["source"] == 0
  a, b, c, d, e, f = m["map"]
  got = np.asarray(out["pil"][0]).astype(np.int64)
  y, x = np.mgrid[: got.shape[0], : got.shape[1]] + 0.5
  np.testing.assert_array_equal(np.floor(a * x + b * y + c), got[..., 0])
  np.testing.assert_array_equal(np.floor(d * x + e * y + f), got[..., 1])


def test_result_map_is_none_for_an_untracked_image(service):
  out = run(service, "result = Image.new('RGB', (20, 10))")
  assert out["result_maps"] == [None]


def test_image_references(service):
  req = urllib.request.Request(
    service.url + "/v1/images", data=GRAD_PNG, method="PUT", headers={"Content-Type": "image/png"}
  )
  with urllib.request.urlopen(req) as r:
    ref = json.load(r)["ref"]
  assert ref.startswith("sha256:")
  status, out = post(service, {"code": "result = image.crop((0, 0, 5, 5))", "images": [ref]})
  assert status == 200 and out["ok"]
  # An output's reference can be the next turn's input.
  status, out2 = post(service, {"code": "print(image.size)", "images": [ref, out["image_refs"][0]], "image_index": 1})
  assert out2["stdout"] == "(5, 5)\n"
  status, out = post(service, {"code": "result = image", "images": ["sha256:" + "0" * 64]})
  assert status == 404 and out["error"]["type"] == "UnknownImage"


def test_bad_requests_are_refused(service):
  assert post(service, {"images": []})[0] == 400
  assert post(service, {"code": "x", "images": ["not base64!"]})[0] == 400
  assert post(service, {"code": "x", "images": [b64(b"GIF89a....")]})[0] == 400
  assert post(service, {"code": "x", "image_index": -1})[0] == 400
  assert post(service, {"code": "x", "timeout_s": "soon"})[0] == 400
  assert post(service, {"code": "x" * 100_000})[0] == 400


def test_health_metrics_and_isolation_layers(service):
  assert run(service, "1 / 0")["error"]["type"] == "ZeroDivisionError"
  health = service.get_json("/healthz")
  assert health["ok"] and health["workers"] == 2
  assert all(health["isolation"].values()), health["isolation"]  # every layer active here
  text = service.get_text("/metrics")
  for name in (
    "executor_calls_total",
    'executor_errors_total{type="ZeroDivisionError"}',
    "executor_timeouts_total",
    "executor_call_duration_seconds_bucket",
    "executor_queue_depth",
    "executor_rejected_total",
  ):
    assert name in text, name
  assert "isolation layers" in service.log() and "[active] seccomp" in service.log()
