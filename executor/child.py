"""The per-call child: sandbox itself, decode the inputs, run the model's code, encode the result.

Runs in a process forked from a warm worker and never returns (`os._exit`). It reports one frame
(see protocol.py) on fd 3: {"ok", "error", "ops", "no_result"} and the result PNGs. Everything
it reports is checked again by the worker, because the model's code ran in this process first.
Printed text goes straight to fd 1 (a pipe the worker reads and caps).
"""

from __future__ import annotations

import builtins
import io
import math
import os
import re
import resource
import select
import sys
import traceback
import warnings
from typing import Any, NoReturn

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from codevision_jax.processing import png
from executor import protocol, sandbox, trace
from executor.config import Config

CODE_FILENAME = "<code>"
RESULT_FD = 3
SETUP_FAILED = 70  # exit status when the child could not sandbox itself or read its request
_INTERNAL_PATH = re.compile(r"(/[\w.+-]+)+/(site-packages|lib/python3[\d.]*|executor)/[\w./+-]*")
_memory_mb = 0  # this call's memory allowance, for the MemoryError text
_RESTORED_MODULES = (builtins, io, os, sys, protocol, protocol.json, protocol.struct, traceback)


class CodeError(Exception):
  """An error reported to the model as {"type": kind, "message": text}."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def _place_fds(req_fd: int, out_fd: int, res_fd: int, landlock_fd: int) -> int:
  """0 = request pipe, 1 and 2 = stdout pipe, 3 = result pipe, 4 = Landlock ruleset; closes the rest."""
  import fcntl  # pylint: disable=import-outside-toplevel

  high = [
    fcntl.fcntl(fd, fcntl.F_DUPFD, 100) if fd >= 0 else -1 for fd in (req_fd, out_fd, out_fd, res_fd, landlock_fd)
  ]
  for target, fd in enumerate(high):
    if fd >= 0:
      os.dup2(fd, target, inheritable=False)
  os.closerange(5, 1 << 16)
  return 4 if landlock_fd >= 0 else -1


def _error_dict(exc: BaseException, source_lines: list[str]) -> dict[str, Any]:
  """{"type", "message", "line"} naming the model's line where `exc` happened; no service paths."""
  if isinstance(exc, CodeError):
    return {"type": exc.kind, "message": str(exc), "line": None}
  line = None
  if isinstance(exc, SyntaxError) and exc.filename == CODE_FILENAME:
    line = exc.lineno
    message = exc.msg
  else:
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
      if frame.f_code.co_filename == CODE_FILENAME:
        line = lineno
    try:
      message = str(exc)
    except Exception:  # pylint: disable=broad-except
      message = "(the exception's message could not be read)"
  kind = "MemoryError" if isinstance(exc, MemoryError) else str(type(exc).__name__)
  if isinstance(exc, MemoryError):
    message = (message + " " if message else "") + (f"(the code needed more than its {_memory_mb} MiB of memory)")
  message = _INTERNAL_PATH.sub("<library>", message)
  if len(message) > 1000:
    message = message[:1000] + "..."
  if line is not None:
    text = source_lines[line - 1].strip() if 0 < line <= len(source_lines) else ""
    message = f"{message} (line {line}: {text[:200]})" if text else f"{message} (line {line})"
  return {"type": kind, "message": message, "line": line}


def _decode_inputs(blobs: list[bytes]) -> list[Image.Image]:
  images = []
  for i, data in enumerate(blobs):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise CodeError("InputImageError", f"input image {i} is too large: {e}") from None
    except MemoryError:
      raise CodeError("InputImageError", f"input image {i} is too large to decode") from None
    except Exception as e:  # pylint: disable=broad-except
      raise CodeError(
        "InputImageError", f"input image {i} is not a readable PNG or JPEG ({type(e).__name__})"
      ) from None
    images.append(im if im.mode == "RGB" else im.convert("RGB"))
  return images


def _to_image(obj: Any, i: int) -> Image.Image:
  if isinstance(obj, Image.Image):
    im = obj
  elif isinstance(obj, np.ndarray):
    arr = obj
    if arr.ndim == 3 and arr.shape[2] == 1:
      arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
      raise CodeError(
        "ResultError",
        f"result {i}: a numpy array must be HxW or HxWxC with C in (1, 3, 4); got shape {tuple(arr.shape)}",
      )
    if arr.dtype == np.bool_:
      arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
      arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
      arr = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(arr))
  else:
    raise CodeError(
      "ResultError",
      f"result {i} is a {type(obj).__name__}; set `result` to a PIL "
      "image, a numpy array (HxW or HxWxC, uint8 or float in [0, 1]) or a list of them",
    )
  return im


def _encode_result(res: Any, cfg: Config) -> tuple[list[bytes], list]:
  """PNG bytes of the result image(s) and where each came from (`trace.result_map`)."""
  items = list(res) if isinstance(res, (list, tuple)) else [res]
  if not items:
    raise CodeError("ResultError", "`result` is an empty list; put at least one image in it")
  if len(items) > cfg.max_output_images:
    raise CodeError(
      "OutputTooLarge",
      f"the result has {len(items)} images; at most {cfg.max_output_images} are returned, so return fewer",
    )
  out, maps = [], []
  for i, obj in enumerate(items):
    trace.note_result(obj)
    maps.append(trace.result_map(obj))
    if isinstance(obj, Image.Image):
      w, h = obj.size
    elif isinstance(obj, np.ndarray) and obj.ndim >= 2:
      h, w = obj.shape[:2]
    else:
      w = h = 0
    if w * h > cfg.max_output_pixels:
      raise CodeError(
        "OutputTooLarge",
        f"result image {i} is {w}x{h} = {w * h} pixels; the limit "
        f"is {cfg.max_output_pixels}, so crop or resize it first",
      )
    im = _to_image(obj, i)
    if im.width == 0 or im.height == 0:
      raise CodeError("ResultError", f"result image {i} is empty ({im.width}x{im.height})")
    if im.mode not in ("1", "L", "LA", "RGB", "RGBA", "P", "I;16"):
      im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    out.append(png.encode(im, cfg.png_compress_level))
  return out, maps


# The path every call takes (decode, exec, encode). Rehearsing more (library calls, the error path)
# takes a little more off an isolated call's latency, but on a busy service its CPU competes with
# the calls in flight and costs more than it saves.
_REHEARSAL_CODE = "result = image"


def _rehearse(cfg: Config) -> None:
  """Runs a tiny call (our own code) while the child waits for its request.

  A fresh fork shares the worker's memory copy-on-write, so the first touches of the interpreter's
  and libraries' pages are page faults; taking them here, before the request arrives, keeps them
  off the call's critical path. Nothing of it reaches the call: only the trace is reset after.
  When the request is already waiting (a busy service), the faults would be taken either way, so
  the rehearsal is skipped and the call runs.
  """
  if select.select([0], [], [], 0)[0]:
    return
  buf = io.BytesIO()
  Image.new("RGB", (32, 24)).save(buf, "PNG")
  header = _execute({"code": _REHEARSAL_CODE}, [buf.getvalue()], cfg)
  protocol.encode(header, header.pop("_blobs", []))
  trace.reset()


def serve(cfg: Config, box: sandbox.Sandbox, fds: tuple[int, int, int]) -> NoReturn:
  """Runs in a spare child forked ahead of time: sandboxes itself, waits for one call, runs it, exits.

  `fds` are the request pipe (read end), the stdout pipe and the result pipe (write ends).
  """
  global _memory_mb  # pylint: disable=global-statement
  _memory_mb = cfg.memory_mb
  code = SETUP_FAILED
  try:
    req_fd, out_fd, res_fd = fds
    box.landlock_fd = _place_fds(req_fd, out_fd, res_fd, box.landlock_fd)
    sys.stdout = sys.stderr = io.TextIOWrapper(
      io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace", write_through=True
    )
    sys.stdin = io.StringIO("")
    box.apply(sandbox.Limits(memory_bytes=cfg.memory_mb << 20, open_files=cfg.open_files))
    os.environ.clear()
    _rehearse(cfg)
    frame = protocol.read_frame(0)
    if frame is None:
      return
    req, blobs = frame
    cpu = int(math.ceil(req["timeout_s"])) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    header = _execute(req, blobs, cfg)
    header_blobs = header.pop("_blobs", [])
    sys.stdout.flush()
    protocol.write_frame(RESULT_FD, header, header_blobs)
    os.closerange(1, 4)  # EOF for the worker now, before the exit frees the memory
    code = 0
  finally:
    os._exit(code)  # pylint: disable=protected-access


def _execute(req: dict[str, Any], blobs: list[bytes], cfg: Config) -> dict[str, Any]:
  source = req["code"]
  lines = source.splitlines()
  try:
    images = _decode_inputs(blobs)
    index = req.get("image_index", 0)
    if not images:
      selected = None
    elif not 0 <= index < len(images):
      raise CodeError(
        "IndexError",
        f"image_index {index} is out of range: the trajectory has "
        f"{len(images)} image(s), numbered 0 to {len(images) - 1}",
      )
    else:
      selected = images[index]
    trace.start(images)
    namespace = {
      "__name__": "__main__",
      "__builtins__": builtins,
      "image": selected,
      "img": selected,
      "images": images,
      "Image": Image,
      "ImageDraw": ImageDraw,
      "ImageEnhance": ImageEnhance,
      "ImageFilter": ImageFilter,
      "ImageOps": ImageOps,
      "np": np,
      "cv2": cv2,
      "math": math,
    }
    compiled = compile(source, CODE_FILENAME, "exec")
    saved = {m: dict(m.__dict__) for m in _RESTORED_MODULES}
    try:
      exec(compiled, namespace)  # pylint: disable=exec-used
    except SystemExit:
      pass  # exit() ends the code like the end of a script
    finally:
      # So that reporting works even if the code replaced builtins or the modules used to report
      # (the process is discarded after this call either way).
      for module, contents in saved.items():
        module.__dict__.clear()
        module.__dict__.update(contents)
    trace.stop()
    res = namespace.get("result")
    if res is None:
      res = namespace.get("output")
    pngs, maps = ([], []) if res is None else _encode_result(res, cfg)
    return {"ok": True, "error": None, "ops": trace.OPS, "result_maps": maps, "no_result": res is None, "_blobs": pngs}
  except BaseException as e:  # pylint: disable=broad-except
    return {"ok": False, "error": _error_dict(e, lines), "ops": trace.OPS, "no_result": True}
