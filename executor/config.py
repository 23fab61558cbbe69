"""Service settings shared by the server, the workers and the per-call children.

Every field is a command-line option of `python -m executor` (`max_code_chars` is
`--max-code-chars`); `--help` lists them with their defaults and the text below.
"""

from __future__ import annotations

import dataclasses
import json


def _option(default, help_text: str, **kw):
  return dataclasses.field(default=default, metadata={"help": help_text, **kw})


@dataclasses.dataclass
class Config:
  """Limits and sizes. The server passes the whole object to each worker as JSON."""

  workers: int = _option(2, "worker processes, each running one call at a time")
  queue_size: int = _option(64, "calls waiting for a worker before the service answers 429")
  default_timeout_s: float = _option(10.0, "wall-clock seconds per call when the request gives no timeout_s")
  max_timeout_s: float = _option(
    60.0, "the most a request's timeout_s may ask for; a larger one runs with this and the answer's `notes` say so"
  )
  memory_mb: int = _option(1024, "address space (MB) a call may add to its worker's")
  open_files: int = _option(64, "open files per call")
  max_input_pixels: int = _option(
    64_000_000, "pixels per input image; larger ones are refused (400, decompression bombs)"
  )
  max_output_pixels: int = _option(16_777_216, "pixels per result image (4096 x 4096)")
  max_output_images: int = _option(8, "result images per call")
  max_result_mb: int = _option(64, "MB of all result PNGs of one call together")
  max_stdout_bytes: int = _option(64 << 10, "bytes of printed output kept per call")
  max_code_chars: int = _option(16_384, "characters of `code` per call; longer code is refused (400)")
  max_request_mb: int = _option(
    64, "HTTP body limit (MB), answered with 413 beyond it; memory is bounded by (queue_size + workers) x this"
  )
  image_cache_mb: int = _option(
    1024, "MB of images kept for 'sha256:' references (PUT /v1/images, inputs and results), least recently used dropped"
  )
  png_compress_level: int = _option(1, "zlib level of result PNGs (1: fast, a little larger)")
  isolation: str = _option(
    "auto",
    "'auto': bubblewrap, else unshare, else plain processes; or force 'bwrap', 'unshare' or 'none' (debugging only)",
    choices=("auto", "bwrap", "unshare", "none"),
  )

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "Config":
    return cls(**json.loads(text))
