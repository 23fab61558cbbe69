"""Run metrics: FLOPs and MFU estimates, TensorBoard summaries, JSON lines, and a console progress
bar."""

from __future__ import annotations

import json
import math
import sys
import time

from codevision_jax.durations import hms

# Dense bf16 peak TFLOP/s per device, by substring of `jax.devices()[0].device_kind`.
PEAK_TFLOPS = {
  "H200": 989.0,
  "H100": 989.0,
  "A100": 312.0,
  "TPU v6": 918.0,
  "TPU v5p": 459.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v4": 275.0,
}


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float:
  """Peak FLOP/s of one device (0 when unknown, e.g. CPU, unless `override_tflops` is set)."""
  if override_tflops:
    return override_tflops * 1e12
  for name, tflops in PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return tflops * 1e12
  return 0.0


def step_flops(model_config, *, tokens: float, seq_len: int, patches: float, train_vision: bool) -> float:
  """Model FLOPs of one training step (forward + backward), the usual 6N-per-token estimate.

  Decoder: 6 * (matmul parameters) per token plus causal attention 6 * layers * T * d_attn per
  token (QK^T and AV, half of the square). Vision: 2N (forward only) when frozen, 6N when it
  trains, per patch, plus full attention over each image's patches (approximated by 256 keys).
  """
  t, v = model_config.text, model_config.vision
  d_attn = t.num_attention_heads * t.resolved_head_dim
  d_kv = t.num_key_value_heads * t.resolved_head_dim
  per_layer = t.hidden_size * (d_attn + 2 * d_kv) + d_attn * t.hidden_size + 3 * t.hidden_size * t.intermediate_size
  text_params = t.num_hidden_layers * per_layer + t.hidden_size * t.vocab_size
  text = 6 * text_params * tokens + 6 * t.num_hidden_layers * d_attn * (seq_len / 2) * tokens
  vis_per_block = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
  unit = v.hidden_size * v.spatial_merge_size**2
  vis_params = v.depth * vis_per_block + (unit * unit + unit * v.out_hidden_size) / v.spatial_merge_size**2
  mult = 6 if train_vision else 2
  vision = mult * vis_params * patches + mult * v.depth * 2 * v.hidden_size * 256 * patches
  return float(text + vision)


class SummaryWriter:
  """TensorBoard scalars in `<workdir>/tensorboard` (primary process only)."""

  def __init__(self, logdir: str, enabled: bool = True):
    self.writer = None
    if enabled:
      from tensorboardX import SummaryWriter as TBWriter  # Deferred: import cost.

      self.writer = TBWriter(logdir)

  def scalars(self, step: int, values: dict):
    if self.writer is None:
      return
    for k, v in values.items():
      if v is not None and math.isfinite(float(v)):
        self.writer.add_scalar(k, float(v), step)
    self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()


class JsonlWriter:
  """One JSON object per line appended to `path` (primary process only), e.g. RL's metrics.jsonl:
  a resumed run appends to what the earlier one wrote."""

  def __init__(self, path: str, enabled: bool = True):
    self.path, self.enabled = path, enabled

  def write(self, line: dict) -> None:
    if self.enabled:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


class ProgressBar:
  """`step 12/100 [#####.....] 1.9 it/s 3.2k tok/s loss 2.31 ETA 0:00:46` on stderr.

  Redraws in place on a terminal; elsewhere (logs, CI) prints a line every `every` steps.
  """

  def __init__(self, total: int, start: int = 0, every: int = 10, stream=None, width: int = 24):
    self.total, self.start, self.every, self.width = total, start, every, width
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.perf_counter()
    self.last = None

  def update(self, step: int, tokens_per_s: float = 0.0, **values):
    done = step - self.start
    elapsed = time.perf_counter() - self.t0
    rate = done / elapsed if elapsed > 0 and done else 0.0
    eta = (self.total - step) / rate if rate else float("nan")
    filled = int(self.width * step / max(self.total, 1))
    extra = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    line = (
      f"step {step}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] "
      f"{rate:.2f} it/s {tokens_per_s / 1e3:.1f}k tok/s {extra} "
      f"ETA {hms(eta) if math.isfinite(eta) else '?'}"
    )
    self.last = line
    if self.tty:
      self.stream.write("\r" + line)
      self.stream.flush()
    elif step == self.total or step % self.every == 0:
      self.stream.write(line + "\n")
      self.stream.flush()

  def close(self):
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()
