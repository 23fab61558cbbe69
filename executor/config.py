"""Service settings shared by the server, the workers and the per-call children."""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass
class Config:
  """Limits and sizes. The server passes the whole object to each worker as JSON."""
  workers: int = 2
  queue_size: int = 64                 # calls waiting for a worker before 429
  default_timeout_s: float = 10.0      # wall-clock deadline when the request gives none
  max_timeout_s: float = 60.0          # requests may ask for at most this much
  memory_mb: int = 1024                # address space a call may add to the worker's own
  open_files: int = 64
  max_input_pixels: int = 64_000_000   # per input image; bigger decodes fail (decompression bombs)
  max_output_pixels: int = 16_777_216  # per result image (4096 x 4096)
  max_output_images: int = 8
  max_result_mb: int = 64              # all result PNGs of one call together
  max_stdout_bytes: int = 64 << 10
  max_code_chars: int = 16_384
  max_request_mb: int = 64             # HTTP body limit; memory is bounded by
                                       # (queue_size + workers) x this
  image_cache_mb: int = 1024           # PUT /v1/images store (LRU)
  png_compress_level: int = 1          # result PNGs: fast to write, a little larger
  isolation: str = "auto"              # "auto": bubblewrap, else unshare, else plain processes;
                                       # or force "bwrap", "unshare", "none" (debugging only)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "Config":
    return cls(**json.loads(text))
