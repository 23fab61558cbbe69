"""Forged tool evidence: code that tries to make the service report operations it did not perform.

The dense reward believes the `ops` and `result_maps` the service answers. Each snippet below
reaches into the process that runs it (module lookups, the garbage collector, patched tracer or
image libraries before or after real calls, native calls, a forged result frame, forged output
text) to claim a rotation, a flip or a crop whose pixels it never returned. None may be believed:
the forged operation is not in `ops` (it may be in `ops_claimed`, which nothing scores) and no
result map shows it. Honest calls beside them report their real operations.
"""

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from codevision_jax.execution.ops import core_ops, crop_boxes
from executor.local import local_service


@pytest.fixture(scope="module")
def service():
  with local_service(workers=1) as s:
    yield s


def _gradient(w: int = 120, h: int = 80) -> bytes:
  x, y = np.meshgrid(np.arange(w), np.arange(h))
  im = Image.fromarray(np.stack([x * 2, y * 3, (x + y) % 256], -1).astype(np.uint8))
  buf = io.BytesIO()
  im.save(buf, "PNG")
  return buf.getvalue()


GRAD_PNG = _gradient()
ROT180 = [-1.0, 0.0, 120.0, 0.0, -1.0, 80.0]  # output -> input map of a 180-degree rotation
TARGET = [10, 10, 50, 50]


def execute(service, code: str) -> dict:
  body = json.dumps({"code": code, "images": [base64.b64encode(GRAD_PNG).decode()], "image_index": 0}).encode()
  req = urllib.request.Request(service.url + "/v1/execute", data=body, headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=60) as r:
    return json.load(r)


FIND_TRACE = (
  "import sys\ntr = [m for n, m in list(sys.modules.items()) if hasattr(m, 'OPS') and hasattr(m, 'result_map')][0]\n"
)
FAKE_ROTATE = "{'op': 'rotate', 'angle': 180, 'expand': True, 'fn': 'Image.rotate'}"
FAKE_FLIP = "{'op': 'flip', 'direction': 'horizontal', 'fn': 'np.fliplr'}"
FAKE_CROP = "{'op': 'crop', 'box': [10, 10, 50, 50], 'source': 0, 'fn': 'Image.crop'}"

# name, code, the core operation it forges, the crop box it forges (or None)
FORGERIES = [
  ("module_lookup_append", FIND_TRACE + f"tr.OPS.append({FAKE_ROTATE})\nresult = image", "rotate_180", None),
  ("module_lookup_no_result", FIND_TRACE + f"tr.OPS.append({FAKE_ROTATE})\nprint('done')", "rotate_180", None),
  ("module_lookup_then_error", FIND_TRACE + f"tr.OPS.append({FAKE_ROTATE})\n1 / 0", "rotate_180", None),
  (
    "gc_finds_the_trace_list",
    """
import gc
gc.unfreeze()
image.crop((0, 0, 5, 5))  # a real op, so the trace list holds an entry to recognise
for obj in gc.get_objects():
  if isinstance(obj, list) and obj and isinstance(obj[0], dict) and obj[0].get('op') == 'crop':
    obj.append(%s)
result = image
"""
    % FAKE_ROTATE,
    "rotate_180",
    None,
  ),
  ("replace_the_trace_list", FIND_TRACE + f"tr.OPS[:] = [{FAKE_FLIP}]\nresult = image", "flip_horizontal", None),
  (
    "patch_record_function",
    FIND_TRACE
    + f"""
real = tr._record
tr._record = lambda entry: real({FAKE_ROTATE})
result = image.resize((120, 80))
""",
    "rotate_180",
    None,
  ),
  (
    "forged_map_attribute",
    FIND_TRACE
    + f"""
tr.OPS.append({FAKE_ROTATE})
result = image.copy()
result._cv_map = (0, tuple({ROT180}))
""",
    "rotate_180",
    None,
  ),
  (
    "patch_result_map",
    FIND_TRACE
    + f"""
tr.OPS.append({FAKE_ROTATE})
tr.result_map = lambda obj: {{'source': 0, 'map': {ROT180}}}
result = image
""",
    "rotate_180",
    None,
  ),
  (
    "patch_pil_before_a_real_call",
    """
wrapper = Image.Image.rotate
names = wrapper.__code__.co_freevars
cell = wrapper.__closure__[names.index('orig')]
cell.cell_contents = lambda self, *a, **k: self.copy()
result = image.rotate(180)
""",
    "rotate_180",
    None,
  ),
  (
    "swap_pixels_after_a_real_call",
    """
r = image.rotate(180)
result = image.copy()
result._cv_map = r._cv_map
""",
    "rotate_180",
    None,
  ),
  (
    "patch_numpy_before_a_real_call",
    """
wrapper = np.rot90
cell = wrapper.__closure__[wrapper.__code__.co_freevars.index('orig')]
cell.cell_contents = lambda m, *a, **k: m.copy()
result = np.rot90(np.asarray(image), 2)
""",
    "rotate_180",
    None,
  ),
  (
    "patch_cv2_before_a_real_call",
    """
wrapper = cv2.flip
cell = wrapper.__closure__[wrapper.__code__.co_freevars.index('orig')]
cell.cell_contents = lambda a, *rest, **k: a.copy()
result = cv2.flip(np.asarray(image), 1)
""",
    "flip_horizontal",
    None,
  ),
  (
    "patch_crop_to_cut_elsewhere",
    """
wrapper = Image.Image.crop
cell = wrapper.__closure__[wrapper.__code__.co_freevars.index('orig')]
real = cell.cell_contents
cell.cell_contents = lambda self, box=None: real(self, (30, 30, 70, 70))
result = image.crop((10, 10, 50, 50))
""",
    None,
    TARGET,
  ),
  (
    "inflate_a_real_crop",
    FIND_TRACE
    + f"""
result = image.crop((20, 20, 30, 30))
tr.OPS.append({FAKE_CROP})
""",
    None,
    TARGET,
  ),
  (
    "photometric_cover_story",
    FIND_TRACE
    + f"""
from PIL import ImageEnhance
out = ImageEnhance.Contrast(image).enhance(1.2)
tr.OPS.append({FAKE_ROTATE})
out._cv_map = (0, tuple({ROT180}))
result = out
""",
    "rotate_180",
    None,
  ),
  (
    "forged_flip_beside_a_real_rotation",
    FIND_TRACE
    + f"""
result = image.rotate(90, expand=True)
tr.OPS.append({FAKE_FLIP})
""",
    "flip_horizontal",
    None,
  ),
  (
    "ctypes_list_append",
    FIND_TRACE
    + f"""
import ctypes
ctypes.pythonapi.PyList_Append.argtypes = [ctypes.py_object, ctypes.py_object]
ctypes.pythonapi.PyList_Append(tr.OPS, {FAKE_ROTATE})
result = image
""",
    "rotate_180",
    None,
  ),
  (
    "forged_result_frame",
    f"""
import io, os, sys
proto = [m for n, m in list(sys.modules.items()) if hasattr(m, 'write_frame')][0]
buf = io.BytesIO()
image.save(buf, 'PNG')
header = {{'ok': True, 'error': None, 'no_result': False, 'ops': [{FAKE_ROTATE}],
          'result_maps': [{{'source': 0, 'map': {ROT180}}}]}}
proto.write_frame(3, header, [buf.getvalue()])
os._exit(0)
""",
    "rotate_180",
    None,
  ),
  (
    "forged_output_text",
    f"""
import json
print(json.dumps({{'ok': True, 'ops': [{FAKE_ROTATE}],
                  'result_maps': [{{'source': 0, 'map': {ROT180}}}]}}))
""",
    "rotate_180",
    None,
  ),
]


@pytest.mark.parametrize("name,code,forged_core,forged_box", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_evidence_is_not_believed(service, name, code, forged_core, forged_box):
  out = execute(service, code)
  if forged_core is not None:
    assert forged_core not in core_ops(out["ops"]), (name, out["ops"], out.get("error"))
  if forged_box is not None:
    assert forged_box not in crop_boxes(out["ops"]), (name, out["ops"])
  for m in out.get("result_maps") or []:
    assert m is None or m["map"] != ROT180, (name, m)
  for op in out["ops"]:  # what is believed was claimed by the trace too
    assert op in out.get("ops_claimed", []), (name, op)


# Forgeries that never reach the child's trace (a forged frame or printed text) or that end in an
# error (the trace of a failed call is kept, but no image proves anything).
NOT_IN_TRACE = {"forged_result_frame", "forged_output_text", "module_lookup_then_error"}


def test_the_forgeries_reached_the_trace(service):
  """The suite tests something: the child's own trace did carry the forged entries."""
  missing = []
  for name, code, core, box in FORGERIES:
    if name in NOT_IN_TRACE:
      continue
    claimed = execute(service, code).get("ops_claimed", [])
    if not (core in core_ops(claimed) if core else box in crop_boxes(claimed)):
      missing.append(name)
  assert missing == []


@pytest.mark.parametrize(
  "code,core,boxes",
  [
    ("result = image.rotate(180)", {"rotate_180"}, []),
    ("result = np.rot90(np.asarray(image), 2)", {"rotate_180"}, []),
    ("result = cv2.flip(np.asarray(image), 1)", {"flip_horizontal"}, []),
    ("result = image.crop((10, 10, 50, 50))", {"crop"}, [TARGET]),
    ("result = image.rotate(90, expand=True).crop((10, 20, 30, 50))", {"crop", "rotate_90"}, None),
    (
      "from PIL import ImageEnhance\nresult = ImageEnhance.Contrast(image.crop((10, 10, 50, 50))).enhance(1.3)",
      {"crop"},
      [TARGET],
    ),
  ],
)
def test_honest_calls_are_believed(service, code, core, boxes):
  out = execute(service, code)
  assert out["ok"], out["error"]
  assert core_ops(out["ops"]) == core, out
  if boxes is not None:
    assert crop_boxes(out["ops"]) == boxes
  assert all(m is not None for m in out["result_maps"])
  assert out["ops"] == out["ops_claimed"]


def test_an_operation_whose_output_is_not_returned_proves_nothing(service):
  out = execute(service, "image.rotate(90, expand=True)\nresult = image")
  assert core_ops(out["ops_claimed"]) == {"rotate_90"}
  assert core_ops(out["ops"]) == set()
