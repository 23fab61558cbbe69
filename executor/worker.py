"""A pre-warmed worker: imports everything once, then forks one sandboxed child per call.

Started by the pool (`python -m executor.worker CONFIG_JSON`, normally under bubblewrap with no
network and an unprivileged user). Talks to the server over its stdin/stdout with protocol.py
frames; its own prints and logs go to stderr. The worker never runs model code itself; it enforces
the wall-clock deadline (SIGKILL) and the output caps on each child, and checks what the child
sends back before passing it on.
"""

from __future__ import annotations

import os

# Single-threaded math libraries; must be set before numpy/cv2 load.
for _var in (
  "OMP_NUM_THREADS",
  "OPENBLAS_NUM_THREADS",
  "MKL_NUM_THREADS",
  "NUMEXPR_NUM_THREADS",
  "VECLIB_MAXIMUM_THREADS",
  "OPENCV_FOR_THREADS_NUM",
):
  os.environ[_var] = "1"
os.environ["OPENCV_OPENCL_RUNTIME"] = "disabled"

# pylint: disable=wrong-import-position
import gc
import io
import json
import math
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps  # pylint: disable=unused-import

from codevision_jax.processing import png
from executor import child, evidence, protocol, sandbox, trace
from executor.config import Config

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_posix_exit = os._exit  # pylint: disable=protected-access


def _warm_up() -> None:
  """Runs the common paths once so lazy imports and first-call set-up happen before any fork."""
  Image.init()
  im = Image.new("RGB", (64, 48), "white")
  buf = io.BytesIO()
  im.save(buf, "PNG")
  im.save(io.BytesIO(), "JPEG")
  im = Image.open(io.BytesIO(buf.getvalue()))
  im.load()
  ImageDraw.Draw(im).text((1, 1), "warm", fill="black")
  ImageDraw.Draw(im).rectangle((2, 2, 20, 20), outline="red")
  ImageFont.load_default()
  im = ImageEnhance.Contrast(im).enhance(1.5).filter(ImageFilter.GaussianBlur(2))
  im = ImageOps.autocontrast(im.rotate(30, expand=True).transpose(Image.Transpose.ROTATE_90))
  arr = np.asarray(im)
  cv2.GaussianBlur(arr, (5, 5), 0)
  cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
  cv2.resize(arr, (32, 32))
  np.linalg.norm(arr.astype(np.float32))
  for mode in ("RGB", "RGBA", "L", "P"):
    png.encode(Image.fromarray(arr).convert(mode))


_MAX_OP_JSON = 1024


def _checked_ops(ops: Any) -> list[dict[str, Any]]:
  """The child's trace, bounded: at most MAX_OPS + 1 entries, each a small JSON object."""
  if not isinstance(ops, list):
    raise ValueError("bad ops")
  return [op for op in ops[: trace.MAX_OPS + 1] if isinstance(op, dict) and len(json.dumps(op)) <= _MAX_OP_JSON]


def _checked_maps(maps: Any, n: int) -> list[dict[str, Any] | None]:
  """The child's result maps, one per result image: well-formed entries, None for the others."""
  maps = maps if isinstance(maps, list) and len(maps) == n else [None] * n
  out = []
  for m in maps:
    ok = (
      isinstance(m, dict)
      and isinstance(m.get("source"), int)
      and isinstance(m.get("map"), list)
      and len(m["map"]) == 6
      and all(isinstance(v, (int, float)) and math.isfinite(v) for v in m["map"])
    )
    out.append({"source": m["source"], "map": [float(v) for v in m["map"]]} if ok else None)
  return out


def _png_size(data: bytes) -> tuple[int, int] | None:
  if len(data) < 24 or not data.startswith(_PNG_SIG) or data[12:16] != b"IHDR":
    return None
  return struct.unpack(">II", data[16:24])


# Runs as an ordinary call at start-up; reports what the sandbox looks like from inside.
_PROBE_CODE = """
import ctypes, json, os, resource
libc = ctypes.CDLL(None)
res = {
    "env_empty": not os.environ,
    "uid": os.getuid(),
    "rlimits": resource.getrlimit(resource.RLIMIT_FSIZE) == (0, 0)
               and resource.getrlimit(resource.RLIMIT_NPROC) == (0, 0)
               and resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY,
    "no_new_privs": libc.prctl(39, 0, 0, 0, 0) == 1,   # PR_GET_NO_NEW_PRIVS
    "seccomp_filter": libc.prctl(21, 0, 0, 0, 0) == 2,  # PR_GET_SECCOMP: 2 = filter mode
}
try:
  open("/proc/self/status").read()
  res["landlock_blocks_read"] = False
except PermissionError:
  res["landlock_blocks_read"] = True
print(json.dumps(res))
"""


class Worker:
  """State prepared once (config, Landlock ruleset, seccomp program); `handle` runs one call."""

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.spare: tuple[int, int, int, int] | None = None  # pid, request, stdout, result fds
    self.zombies: list[int] = []  # children killed after their result arrived, reaped later
    abi = sandbox.landlock_abi()
    self.box = sandbox.Sandbox(
      landlock_fd=sandbox.make_landlock_ruleset(abi) if abi else -1,
      seccomp_bpf=sandbox.compile_seccomp(),
      base_vm_bytes=sandbox.vm_size_bytes(),
    )
    self.landlock_abi = abi

  def layers(self) -> dict[str, Any]:
    """Which isolation layers a call really gets, measured from inside a probe call."""
    reply, _ = self.handle({"code": _PROBE_CODE, "image_index": 0, "timeout_s": 10.0}, [])
    try:
      probe = json.loads(reply["stdout"])
    except (TypeError, ValueError):
      probe = {"error": reply.get("error")}
    try:
      interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
      interfaces = []
    return {
      "probe": probe,
      "rlimits": probe.get("rlimits", False),
      "no_new_privs": probe.get("no_new_privs", False),
      "landlock": probe.get("landlock_blocks_read", False),
      "landlock_abi": self.landlock_abi,
      "seccomp": probe.get("seccomp_filter", False),
      "empty_env": probe.get("env_empty", False),
      "uid": os.getuid(),
      "net_ns_inode": os.stat("/proc/self/ns/net").st_ino,
      "interfaces": interfaces,
    }

  def prepare(self) -> None:
    """Forks the next call's child ahead of time, so the fork is off the call's critical path."""
    for pid in self.zombies:
      os.waitpid(pid, 0)
    self.zombies.clear()
    if self.spare is not None:
      return
    req_r, req_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
      try:
        child.serve(self.cfg, self.box, (req_r, out_w, res_w))
      finally:
        _posix_exit(child.SETUP_FAILED)
    for fd in (req_r, out_w, res_w):
      os.close(fd)
    self.spare = (pid, req_w, out_r, res_r)

  def handle(self, req: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Runs one call in a fresh sandboxed child; returns the reply header and result PNGs."""
    for attempt in range(2):
      self.prepare()
      pid, req_w, out_r, res_r = self.spare
      self.spare = None
      t0 = time.monotonic()
      try:
        protocol.write_frame(req_w, req, blobs)
      except BrokenPipeError:  # the spare child died before the call (e.g. killed from outside)
        os.close(req_w)
        for fd in (out_r, res_r):
          os.close(fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if attempt:
          raise
        continue
      os.close(req_w)
      try:
        timeout = float(req["timeout_s"])
        return self._supervise(pid, out_r, res_r, t0 + timeout, timeout, blobs)
      finally:
        os.close(out_r)
        os.close(res_r)
    raise AssertionError("unreachable")

  def _supervise(
    self, pid: int, out_r: int, res_r: int, deadline: float, timeout: float, inputs: list[bytes]
  ) -> tuple[dict[str, Any], list[bytes]]:
    cfg = self.cfg
    pidfd = os.pidfd_open(pid)
    stdout, result = bytearray(), bytearray()
    max_result = (cfg.max_result_mb << 20) + (1 << 20)  # PNGs plus the frame's header
    error = None
    try:
      poller = select.poll()
      open_fds = {out_r: stdout, res_r: result}
      for fd in open_fds:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
      poller.register(pidfd, select.POLLIN)
      exited = False
      # Done when both pipes are closed and the child has exited or has sent its result (it closes
      # its pipes just before exiting; the exit itself, freeing its memory, need not be waited for).
      while open_fds or not (exited or result):
        left = deadline - time.monotonic()
        if left <= 0:
          error = {"type": "TimeoutError", "message": f"the code ran longer than {timeout:g} s and was stopped"}
          break
        for fd, _ in poller.poll(left * 1000):
          if fd == pidfd:
            exited = True
            poller.unregister(pidfd)
            continue
          try:
            chunk = os.read(fd, 1 << 20)
          except BlockingIOError:
            continue
          if not chunk:
            poller.unregister(fd)
            del open_fds[fd]
            continue
          open_fds[fd].extend(chunk)
        if len(stdout) > cfg.max_stdout_bytes:
          error = {
            "type": "OutputTooLarge",
            "message": f"the code printed more than "
            f"{cfg.max_stdout_bytes} bytes and was stopped; print less (e.g. a summary)",
          }
          break
        if len(result) > max_result:
          error = {
            "type": "OutputTooLarge",
            "message": f"the result images take more than "
            f"{cfg.max_result_mb} MiB as PNG; return fewer or smaller images",
          }
          break
    finally:
      if error is not None or not exited:
        os.kill(pid, signal.SIGKILL)
      if exited or error is not None or not result:
        _, status = os.waitpid(pid, 0)
      else:
        status = 0
        self.zombies.append(pid)
      os.close(pidfd)
    text = bytes(stdout[: cfg.max_stdout_bytes]).decode("utf-8", errors="replace")
    if error is not None:
      return {"ok": False, "error": dict(error, line=None), "ops": [], "ops_claimed": [], "stdout": text}, []
    return self._interpret(status, bytes(result), text, timeout, inputs)

  def _interpret(
    self, status: int, result: bytes, text: str, timeout: float, inputs: list[bytes]
  ) -> tuple[dict[str, Any], list[bytes]]:
    """Turns the child's exit status and frame into a checked reply.

    `ops` and `result_maps` are what the returned pixels prove (`evidence.verify`); the child's
    own trace, which the model's code could have written, is only passed on as `ops_claimed`.
    A call that returns no image proves no operation.
    """
    cfg = self.cfg

    def fail(kind: str, message: str, claimed=()):
      return {
        "ok": False,
        "error": {"type": kind, "message": message, "line": None},
        "ops": [],
        "ops_claimed": list(claimed),
        "stdout": text,
      }, []

    if os.WIFSIGNALED(status):
      sig = os.WTERMSIG(status)
      if sig == signal.SIGSYS:
        return fail(
          "SandboxViolation",
          "the code tried an operation the sandbox forbids (starting "
          "processes or programs, network access, or another system-level call) and was "
          "stopped; only image processing with PIL, numpy, cv2 and math is possible",
        )
      if sig in (signal.SIGXCPU, signal.SIGKILL):
        return fail("TimeoutError", f"the code used more than {timeout:g} s of CPU time and was stopped")
      return fail("CrashError", f"the code crashed the interpreter ({signal.Signals(sig).name})")
    if not result:
      if os.WEXITSTATUS(status) == child.SETUP_FAILED:
        return fail("ExecutorError", "the executor could not set up the sandbox for this call; try again")
      return fail(
        "ExitError", f"the code ended the process (exit status {os.WEXITSTATUS(status)}) before a result was produced"
      )
    try:
      header, pngs = protocol.decode(result)
      ok = header["ok"] is True
      ops = _checked_ops(header.get("ops") or [])
      err = header.get("error")
      if not ok:
        if not isinstance(err, dict):
          raise ValueError("bad error")
        line = err.get("line")
        return {
          "ok": False,
          "stdout": text,
          "ops": [],
          "ops_claimed": ops,
          "error": {
            "type": str(err.get("type", "Error"))[:100],
            "message": str(err.get("message", ""))[:2000],
            "line": line if isinstance(line, int) else None,
          },
        }, []
    except (ValueError, KeyError, TypeError):
      return fail(
        "ResultError",
        "the code's process returned a malformed result (did the code replace parts of Python or of the libraries?)",
      )
    if len(pngs) > cfg.max_output_images:
      return fail(
        "OutputTooLarge", f"the result has {len(pngs)} images; at most {cfg.max_output_images} are returned", ops
      )
    for i, blob in enumerate(pngs):
      size = _png_size(blob)
      if size is None:
        return fail("ResultError", f"result image {i} could not be encoded", ops)
      if size[0] * size[1] > cfg.max_output_pixels:
        return fail(
          "OutputTooLarge",
          f"result image {i} is {size[0]}x{size[1]} pixels; the limit "
          f"is {cfg.max_output_pixels}, so crop or resize it first",
          ops,
        )
    if not pngs and header.get("no_result") and not text:
      return fail(
        "NoResult",
        "the code produced neither a result nor any printed text; set "
        "`result` to a PIL image, a numpy array or a list of them",
        ops,
      )
    trusted_ops, maps = evidence.verify(ops, _checked_maps(header.get("result_maps"), len(pngs)), pngs, inputs)
    return {
      "ok": True,
      "error": None,
      "ops": trusted_ops,
      "ops_claimed": ops,
      "stdout": text,
      "result_maps": maps,
    }, pngs


def main() -> None:
  cfg = Config.from_json(sys.argv[1])
  proto_in, proto_out = os.dup(0), os.dup(1)
  os.set_inheritable(proto_in, False)
  os.set_inheritable(proto_out, False)
  devnull = os.open("/dev/null", os.O_RDWR)
  os.dup2(devnull, 0)
  os.dup2(2, 1)
  os.close(devnull)
  sys.stdout = sys.stderr
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  cv2.setNumThreads(0)
  cv2.ocl.setUseOpenCL(False)
  Image.MAX_IMAGE_PIXELS = cfg.max_input_pixels
  _warm_up()
  trace.install()
  worker = Worker(cfg)
  for var in list(os.environ):
    if var not in ("PATH", "LANG"):
      del os.environ[var]
  # Everything allocated so far is shared with the children copy-on-write; keep the collector
  # from walking (and so copying) it in every child.
  gc.collect()
  gc.freeze()
  protocol.write_frame(proto_out, {"hello": True, "layers": worker.layers()})
  worker.prepare()
  while True:
    frame = protocol.read_frame(proto_in)
    if frame is None:
      return
    req, blobs = frame
    try:
      reply, pngs = worker.handle(req, blobs)
    except Exception as e:  # pylint: disable=broad-except
      reply, pngs = (
        {
          "ok": False,
          "stdout": "",
          "ops": [],
          "error": {"type": "ExecutorError", "message": f"the executor failed to run the code ({e})", "line": None},
        },
        [],
      )
    reply["id"] = req.get("id")
    protocol.write_frame(proto_out, reply, pngs)
    worker.prepare()


if __name__ == "__main__":
  main()
