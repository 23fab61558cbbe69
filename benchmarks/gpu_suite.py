"""One command for an accelerator's performance picture, in one device call of under 8 minutes:

    python -m benchmarks.gpu_suite [--out=gpu_suite.json] [--budget_s=450] [--tiny] [--skip_torch]

Rows, each measured in this run:

* matmul ceiling: a timed 8192^3 bfloat16 matmul (`sft_step.matmul_peak`), TFLOP/s and MFU;
* copy ceiling: device memory bandwidth of a 2 GiB read + write (x + 1), GB/s;
* attention (`benchmarks.attention_forms`): the cudnn backend handed each mask form (causal,
  padded rows, packed rows, the vision tower's images and windows) against the xla backend,
  outputs and gradients ("ok" within bfloat16 rounding, else MISMATCH); and forward + backward
  of each form on the 3B SFT shape, ratio against the dense-mask cuDNN call (skipped off GPUs);
* SFT step (`sft_step.time_step` on the run `train.loop.build` makes, as `launch.sft`): a random
  Qwen2.5-VL-3B-shaped model, 4 rows x 4096 tokens with two 448x448 images per row, bfloat16
  compute over float32 master weights, vision tower and merger frozen, chunked loss; attention
  backend / remat "xla/full", "xla/dots", "cudnn/full", "cudnn/dots" and "auto/full" (auto is the
  row of the backend it resolves to when that was measured). Tokens/s, model TFLOP/s
  (`train.metrics.step_flops`), MFU against the device's published peak
  (`train.metrics.PEAK_TFLOPS`: H200 989 TFLOP/s) and the ratio against transformers;
* decode: a random Qwen2.5-VL-7B-shaped model in bfloat16, 64 prompts of 218 tokens with one
  112x112 image each, 128 greedy new tokens, through `Sampler.generate` (tokens/s from
  t(128) - t(1), `sampler.decode_rate`) and through the slot engine (`DecodeEngine`: chunked
  `append` per slot, then `decode` in rounds of 32 steps, as the agent loop; decode time only);
  ratio against transformers' `generate`;
* the references: transformers + torch on the same shapes (SDPA attention, bf16 autocast over
  float32 weights, gradient checkpointing, fused AdamW for the step; `generate` for decode), run
  first in a child process (so that JAX's and torch's GPU memory pools never meet). Without torch
  (or without CUDA, off `--tiny`) those rows say why they are skipped.

`--tiny` runs every row with toy shapes (the tiny presets, float32) on whatever JAX finds, a CPU
in a couple of minutes; the torch rows then run on the CPU when torch is installed. When the
time spent passes `--budget_s`, the remaining rows are skipped with a note. Prints one table and
writes every row (numbers, or the reason it was skipped) to `--out` as JSON.
Runs on the packages of a typical CUDA image (jax 0.11, flax 0.12, transformers 5, torch 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The sizes of one suite: the real run's or `--tiny`'s."""

  sft_preset: str = "qwen2_5_vl_3b"
  sft_vocab: int = 0  # 0: the preset's.
  sft_rows: int = 4
  sft_length: int = 4096
  sft_images: int = 2  # per row
  sft_image: int = 448  # image side, pixels
  sft_steps: int = 3
  sft_warmup: int = 1
  compute: str = "bfloat16"
  loss_chunk: int = 2048
  decode_preset: str = "qwen2_5_vl_7b"
  decode_batch: int = 64
  prompt: int = 218
  decode_image: int = 112
  new_tokens: int = 128
  engine_round: int = 32
  engine_chunk: int = 128
  decode_runs: int = 2
  matmul: int = 8192
  copy_mib: int = 2048


REAL = Shapes()
TINY = Shapes(
  sft_preset="qwen2_5_vl_tiny",
  sft_vocab=512,
  sft_rows=2,
  sft_length=256,
  sft_image=112,
  sft_steps=2,
  compute="float32",
  loss_chunk=0,
  decode_preset="qwen2_5_vl_tiny",
  decode_batch=4,
  prompt=48,
  new_tokens=64,
  engine_round=16,
  engine_chunk=32,
  decode_runs=3,
  matmul=256,
  copy_mib=16,
)
SFT_SETTINGS = (("xla", "full"), ("xla", "dots"), ("cudnn", "full"), ("cudnn", "dots"), ("auto", "full"))
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # bytes/s, published


# ---- inputs, shared by both sides ---------------------------------------------------------------


def model_config(preset: str, vocab: int = 0):
  """The preset's architecture with the tiny tokenizer's special-token ids (those `run_setup`
  gives a random preset), and `vocab` when set."""
  from codevision_jax.models import presets

  mc = presets.preset(preset)
  if vocab:
    mc = mc.replace(text=dataclasses.replace(mc.text, vocab_size=vocab))
  return mc.replace(**presets.TINY_TOKENIZER_IDS)


def _image_tokens(mc, side: int):
  """(grid [1, 3], tokens) of a side x side image."""
  g = side // mc.vision.patch_size
  return np.asarray([[1, g, g]], np.int64), g * g // mc.vision.spatial_merge_size**2


def _row(mc, rng, length: int, images: int, side: int) -> np.ndarray:
  """`length` token ids: text, then `images` times (vision start, image pads, vision end, text)."""
  _, n = _image_tokens(mc, side)
  text = length - images * (n + 2)
  if text < images + 1:
    raise ValueError(f"{length} tokens leave no room for text around {images} images of {n} tokens")
  cuts = np.linspace(0, text, images + 2).astype(int)
  parts = [rng.integers(1, 380, cuts[1] - cuts[0])]
  for i in range(images):
    parts += [
      [mc.vision_start_token_id],
      [mc.image_token_id] * n,
      [mc.vision_end_token_id],
      rng.integers(1, 380, cuts[i + 2] - cuts[i + 1]),
    ]
  return np.concatenate(parts).astype(np.int32)


def _pixels(mc, rng, count: int, side: int) -> np.ndarray:
  v = mc.vision
  g = side // v.patch_size
  dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
  return rng.standard_normal((count * g * g, dim)).astype(np.float32)


def sft_examples(mc, s: Shapes) -> list:
  """`sft_rows` examples of exactly `sft_length` tokens with `sft_images` images each; the second
  half of each row carries loss."""
  from codevision_jax.data.encode import Example

  rng = np.random.default_rng(0)
  grid, _ = _image_tokens(mc, s.sft_image)
  out = []
  for _ in range(s.sft_rows):
    ids = _row(mc, rng, s.sft_length, s.sft_images, s.sft_image)
    loss = (np.arange(len(ids)) >= len(ids) // 2) & (ids != mc.image_token_id)
    out.append(
      Example(ids, loss.astype(np.int32), _pixels(mc, rng, s.sft_images, s.sft_image), np.tile(grid, (s.sft_images, 1)))
    )
  return out


def decode_prompts(mc, s: Shapes):
  """(ids [B, P], pixel_values, image_grid_thw [B, 3]): one image per prompt, no padding."""
  rng = np.random.default_rng(1)
  grid, _ = _image_tokens(mc, s.decode_image)
  ids = np.stack([_row(mc, rng, s.prompt, 1, s.decode_image) for _ in range(s.decode_batch)])
  return ids, _pixels(mc, rng, s.decode_batch, s.decode_image), np.tile(grid, (s.decode_batch, 1))


# ---- rows ----------------------------------------------------------------------------------------


def row(name: str, **fields) -> dict:
  """A table row: name, and value/unit, tokens_s, tflops, mfu, ratio, reference, note, skipped."""
  return {"name": name, **fields}


def skipped(name: str, reason: str) -> dict:
  return row(name, skipped=reason)


class Budget:
  """Seconds left of `--budget_s`; rows past it are skipped with a note."""

  def __init__(self, seconds: float):
    self.seconds, self.start = seconds, time.perf_counter()

  def spent(self) -> float:
    return time.perf_counter() - self.start

  def left(self) -> float:
    return self.seconds - self.spent()


def _first_line(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
  return text[:300]


def run_rows(budget: Budget, rows: list, items) -> None:
  """Appends each (name, fn) item's rows (fn returns a row or a list of rows) unless the budget
  is spent; a failing item becomes a skipped row with the error."""
  for name, fn in items:
    if budget.left() <= 0:
      rows.append(skipped(name, f"time budget of {budget.seconds:.0f} s spent"))
      continue
    t = time.perf_counter()
    try:
      out = fn()
    except Exception as e:  # A row that cannot run says why; the suite goes on.
      out = skipped(name, _first_line(e))
    for r in out if isinstance(out, list) else [out]:
      r.setdefault("seconds", round(time.perf_counter() - t, 1))
      rows.append(r)
    print(f"  [{budget.spent():6.1f} s] {name}", file=sys.stderr, flush=True)
    gc.collect()


# ---- JAX side ------------------------------------------------------------------------------------


def attention_rows() -> list:
  """cuDNN attention per mask form: parity with xla and fwd+bwd times (skipped off GPUs)."""
  from benchmarks import attention_forms

  return attention_forms.rows()


def _device():
  import jax

  d = jax.devices()[0]
  return d, d.platform, d.device_kind


def matmul_row(s: Shapes) -> dict:
  import jax.numpy as jnp
  from benchmarks.sft_step import matmul_peak
  from codevision_jax import parallel
  from codevision_jax.runtime import metrics

  d, _, kind = _device()
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=[d])
  flops = matmul_peak(mesh, s.matmul, jnp.bfloat16)
  peak = metrics.peak_flops(kind)
  return row(
    f"matmul ceiling ({s.matmul}^3 bf16)",
    value=flops / 1e12,
    unit="TFLOP/s",
    tflops=flops / 1e12,
    mfu=flops / peak if peak else None,
  )


def copy_row(s: Shapes) -> dict:
  import statistics
  import jax
  import jax.numpy as jnp

  d, _, kind = _device()
  n = s.copy_mib * 2**20 // 4
  x = jax.device_put(jnp.zeros((n,), jnp.float32), d)
  f = jax.jit(lambda x: x + 1)
  f(x).block_until_ready()
  times = []
  for _ in range(10):
    t = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t)
  rate = 2 * n * 4 / statistics.median(times)
  peak = next((b for k, b in PEAK_BANDWIDTH.items() if k.lower() in kind.lower()), 0)
  return row(
    f"copy ceiling ({s.copy_mib} MiB read + write)",
    value=rate / 1e9,
    unit="GB/s",
    mfu=rate / peak if peak else None,
    note=f"of {peak / 1e12:.2f} TB/s published" if peak else "",
  )


def sft_config(s: Shapes, backend: str, remat: str):
  """tiny_sft's config with the suite's model, geometry, backend and remat, on one device."""
  from configs import tiny_sft

  c = tiny_sft.get_config()
  c.model.preset, c.model.vocab_size = s.sft_preset, s.sft_vocab
  c.model.attention_backend = backend
  if "scan_layers" in c.model:
    c.model.scan_layers = True
  c.data.synthetic_size = 4 * s.sft_rows  # The plan needs records that fit (its data is unused).
  c.data.buckets = tuple(sorted({s.sft_length, 4096}))
  c.data.batch_size = s.sft_rows
  patch = model_config(s.sft_preset).vision.patch_size
  c.data.patch_budget = s.sft_rows * s.sft_images * (s.sft_image // patch) ** 2
  c.data.max_images = s.sft_rows * s.sft_images
  c.data.max_pixels = s.sft_image**2
  c.data.sort_window = 0
  c.train.steps, c.train.grad_accum = 1, 1
  c.train.compute_dtype, c.train.remat, c.train.loss_chunk = s.compute, remat, s.loss_chunk
  c.mesh.num_devices = 1
  c.mesh.shape.update({"data": 1, "fsdp": 1, "tensor": 1})
  return c


def sft_batch(mc, s: Shapes, data_cfg):
  """(host batch with a microbatch axis of 1, image grids) of the suite's SFT geometry (the
  budgets of `sft_config`'s data section)."""
  import jax
  from codevision_jax.data import pack

  mb = pack.pack(
    sft_examples(mc, s),
    length=s.sft_length,
    rows=s.sft_rows,
    patch_budget=data_cfg.patch_budget,
    max_images=data_cfg.max_images,
    model_config=mc,
    pad_id=0,
  )
  batch = jax.tree.map(lambda x: np.asarray(x)[None], mb)
  return batch, batch.pop("image_grid_thw")


def sft_row(s: Shapes, backend: str, remat: str, workdir: str, torch_ref: dict | None) -> dict:
  from benchmarks.sft_step import time_step
  from codevision_jax.train import loop
  from codevision_jax.runtime import metrics, run_setup

  cfg = sft_config(s, backend, remat)
  resolved = run_setup.attention_backend(cfg.model)
  run = loop.build(cfg, workdir)
  batch, grids = sft_batch(run.model_config, s, cfg.data)
  timed = time_step(run, batch, grids, steps=s.sft_steps, warmup=s.sft_warmup)
  del run
  _, _, kind = _device()
  rate, flop_rate = timed["tokens"] / timed["seconds"], timed["flops"] / timed["seconds"]
  peak = metrics.peak_flops(kind)
  ref = torch_ref.get("tokens_s") if torch_ref and not torch_ref.get("skipped") else None
  return row(
    f"sft {backend}/{remat}",
    value=rate,
    unit="tokens/s",
    tokens_s=rate,
    tflops=flop_rate / 1e12,
    mfu=flop_rate / peak if peak else None,
    ratio=rate / ref if ref else None,
    reference="torch sft" if ref else None,
    step_ms=timed["seconds"] * 1e3,
    loss=timed["loss"],
    note=f"backend {resolved}" if backend == "auto" else "",
  )


def sft_rows(s: Shapes, budget: Budget, rows: list, torch_ref: dict | None, settings=SFT_SETTINGS) -> None:
  """SFT `settings`; "auto" reuses the row of the setting it resolves to when measured."""
  from codevision_jax.runtime import run_setup

  with tempfile.TemporaryDirectory() as workdir:
    items = []
    for backend, remat in settings:
      resolved = run_setup.attention_backend(sft_config(s, backend, remat).model)
      if backend == "auto" and (resolved, remat) in SFT_SETTINGS:
        items.append((f"sft auto/{remat}", lambda r=resolved, m=remat: _alias(rows, r, m)))
      else:
        items.append((f"sft {backend}/{remat}", lambda b=backend, m=remat: sft_row(s, b, m, workdir, torch_ref)))
    run_rows(budget, rows, items)


def _alias(rows: list, backend: str, remat: str) -> dict:
  """The "auto" row: a copy of the measured row of the backend auto resolves to."""
  for r in rows:
    if r["name"] == f"sft {backend}/{remat}":
      if r.get("skipped"):
        return skipped(f"sft auto/{remat}", f"auto is {backend} here, whose row was skipped: {r['skipped']}")
      return {
        **r,
        "name": f"sft auto/{remat}",
        "note": f"auto is {backend} here: the {backend}/{remat} measurement",
        "seconds": 0.0,
      }
  raise RuntimeError(f"no sft {backend}/{remat} row")


def decode_model(s: Shapes):
  import jax.numpy as jnp
  from codevision_jax import models

  dtype = jnp.bfloat16 if s.compute == "bfloat16" else jnp.float32
  return models.build_model(model_config(s.decode_preset), param_dtype=dtype, attention_backend="auto")


def generate_row(s: Shapes, model, torch_ref: dict | None) -> dict:
  import jax
  from benchmarks.sampler import decode_rate
  from codevision_jax.sampling import Sampler

  ids, pv, grid = decode_prompts(model.config, s)
  sampler = Sampler(model, pad_token_id=0)

  def run(new):
    tokens, _ = sampler.generate(ids, pv, grid, max_new_tokens=new)
    jax.block_until_ready(tokens)

  run(s.new_tokens), run(1)  # Compilation of both lengths.
  rate = decode_rate(run, batch=s.decode_batch, new_tokens=s.new_tokens, runs=s.decode_runs)
  return _decode_row("decode Sampler.generate", rate, torch_ref)


def engine_row(s: Shapes, model, torch_ref: dict | None) -> dict:
  import jax
  from codevision_jax.sampling.engine import DecodeEngine

  ids, pv, grid = decode_prompts(model.config, s)
  engine = DecodeEngine(model, chunk=s.engine_chunk)
  patches = len(pv) // s.decode_batch
  b, rounds = s.decode_batch, -(-s.new_tokens // s.engine_round)

  def cycle() -> float:
    """Appends every prompt to its slot, then decodes in rounds; the decode seconds."""
    engine.allocate(b, s.prompt + rounds * s.engine_round)
    for slot in range(b):
      engine.append(slot, ids[slot], pv[slot * patches : (slot + 1) * patches], grid[slot : slot + 1])
    jax.block_until_ready(engine.logits)
    keys = jax.random.split(jax.random.PRNGKey(0), b)  # Raw keys, as Sampler.generate.
    counts = np.zeros((b,), np.int32)
    t = time.perf_counter()
    for _ in range(rounds):
      tokens, _, n = engine.decode(
        np.ones((b,), bool), np.full((b,), s.engine_round, np.int32), keys, counts, max_steps=s.engine_round
      )
      counts = counts + np.asarray(n)
    jax.block_until_ready(tokens)
    seconds = time.perf_counter() - t
    engine.release()
    return seconds

  cycle()  # Compilation.
  seconds = min(cycle() for _ in range(s.decode_runs))
  return _decode_row(
    f"decode slot engine ({s.engine_round}-step rounds)", b * rounds * s.engine_round / seconds, torch_ref
  )


def _decode_row(name: str, rate: float, torch_ref: dict | None) -> dict:
  ref = torch_ref.get("tokens_s") if torch_ref and not torch_ref.get("skipped") else None
  return row(
    name,
    value=rate,
    unit="tokens/s",
    tokens_s=rate,
    ratio=rate / ref if ref else None,
    reference="torch generate" if ref else None,
  )


def decode_rows(s: Shapes, budget: Budget, rows: list, torch_ref: dict | None) -> None:
  names = ("decode Sampler.generate", f"decode slot engine ({s.engine_round}-step rounds)")
  if budget.left() <= 0:
    rows.extend(skipped(n, f"time budget of {budget.seconds:.0f} s spent") for n in names)
    return
  try:
    model = decode_model(s)
  except Exception as e:
    rows.extend(skipped(n, f"building the model: {_first_line(e)}") for n in names)
    return
  run_rows(
    budget,
    rows,
    [(names[0], lambda: generate_row(s, model, torch_ref)), (names[1], lambda: engine_row(s, model, torch_ref))],
  )


# ---- torch side (a child process) ----------------------------------------------------------------

TORCH_SFT, TORCH_DECODE = "torch sft (transformers)", "torch generate (transformers)"


def _hf_model(mc, dtype, device):
  import torch
  import transformers

  d = mc.to_hf_dict()
  d.pop("architectures", None)
  config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
  with torch.device(device):
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
  return model


def _sync(device):
  import torch

  if device == "cuda":
    torch.cuda.synchronize()


def torch_sft_row(s: Shapes, device: str) -> dict:
  import torch

  mc = model_config(s.sft_preset, s.sft_vocab)
  model = _hf_model(mc, torch.float32, device).train()
  for name, p in model.named_parameters():
    p.requires_grad_(".visual." not in f".{name}")
  model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-5, fused=device == "cuda")
  ex = sft_examples(mc, s)
  ids = torch.as_tensor(np.stack([e.input_ids for e in ex]).astype(np.int64), device=device)
  labels = torch.where(torch.as_tensor(np.stack([e.loss_mask for e in ex]), device=device) > 0, ids, -100)
  inputs = dict(
    input_ids=ids,
    attention_mask=torch.ones_like(ids),
    labels=labels,
    pixel_values=torch.as_tensor(np.concatenate([e.pixel_values for e in ex]), device=device),
    image_grid_thw=torch.as_tensor(np.concatenate([e.image_grid_thw for e in ex]), device=device),
    mm_token_type_ids=(ids == mc.image_token_id).long(),
  )
  bf16 = s.compute == "bfloat16"

  def step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)

  times = []
  for i in range(s.sft_warmup + s.sft_steps):
    t = time.perf_counter()
    step()
    if i >= s.sft_warmup:
      times.append(time.perf_counter() - t)
  seconds = float(np.median(times))
  rate = int(ids.numel()) / seconds
  return row(
    TORCH_SFT,
    value=rate,
    unit="tokens/s",
    tokens_s=rate,
    step_ms=seconds * 1e3,
    note=f"sdpa, {'bf16 autocast, ' if bf16 else ''}gradient checkpointing, {device}",
  )


def torch_decode_row(s: Shapes, device: str) -> dict:
  import torch
  from benchmarks.sampler import decode_rate

  mc = model_config(s.decode_preset)
  dtype = torch.bfloat16 if s.compute == "bfloat16" else torch.float32
  model = _hf_model(mc, dtype, device).eval()
  ids, pv, grid = decode_prompts(mc, s)
  t_ids = torch.as_tensor(ids.astype(np.int64), device=device)
  inputs = dict(
    input_ids=t_ids,
    attention_mask=torch.ones_like(t_ids),
    pixel_values=torch.as_tensor(pv, device=device, dtype=dtype),
    image_grid_thw=torch.as_tensor(grid, device=device),
    mm_token_type_ids=(t_ids == mc.image_token_id).long(),
  )

  def run(new):
    with torch.no_grad():
      model.generate(
        **inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None
      )
    _sync(device)

  run(s.new_tokens), run(1)
  rate = decode_rate(run, batch=s.decode_batch, new_tokens=s.new_tokens, runs=s.decode_runs)
  return row(
    TORCH_DECODE,
    value=rate,
    unit="tokens/s",
    tokens_s=rate,
    note=f"sdpa, {str(dtype).removeprefix('torch.')}, {device}",
  )


def torch_rows(s: Shapes, tiny: bool, budget: Budget) -> list:
  """The transformers + torch references (in this process: the child's side)."""
  try:
    import torch
    import transformers
  except ImportError as e:
    return [skipped(n, f"torch/transformers not installed ({e})") for n in (TORCH_SFT, TORCH_DECODE)]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cpu":  # torch's multi-threaded CPU kernels are erratic on shared machines.
    torch.set_num_threads(1)
  if device == "cpu" and not tiny:
    return [skipped(n, "torch has no CUDA device here") for n in (TORCH_SFT, TORCH_DECODE)]
  print(f"  torch {torch.__version__}, transformers {transformers.__version__} on {device}", file=sys.stderr)
  torch.manual_seed(0)
  rows = []
  run_rows(budget, rows, [(TORCH_SFT, lambda: torch_sft_row(s, device))])
  if device == "cuda":
    torch.cuda.empty_cache()
  run_rows(budget, rows, [(TORCH_DECODE, lambda: torch_decode_row(s, device))])
  return rows


def torch_child(args, budget: Budget) -> list:
  """Runs the torch rows in a child process (before JAX takes the GPU), within the budget."""
  names = (TORCH_SFT, TORCH_DECODE)
  if args.skip_torch:
    return [skipped(n, "--skip_torch") for n in names]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "torch.json")
    cmd = [
      sys.executable,
      "-m",
      "benchmarks.gpu_suite",
      "--torch_only",
      f"--out={out}",
      f"--budget_s={max(budget.left() * 0.4, 1):.0f}",
    ] + (["--tiny"] if args.tiny else [])
    try:
      # JAX on the CPU there: the child imports the project but must leave the GPU to torch.
      proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=max(budget.left(), 1), env={**os.environ, "JAX_PLATFORMS": "cpu"}
      )
    except subprocess.TimeoutExpired:
      return [skipped(n, "the torch child ran past the time budget") for n in names]
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    if proc.returncode or not os.path.exists(out):
      tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
      return [skipped(n, f"the torch child failed: {tail}") for n in names]
    with open(out) as f:
      return json.load(f)["rows"]


# ---- the table -----------------------------------------------------------------------------------


def _fmt(x, spec: str) -> str:
  return "" if x is None else format(x, spec)


def table(rows: list) -> str:
  head = f"{'what':<44} {'value':>18} {'TFLOP/s':>8} {'MFU':>6} {'ratio':>6}  reference / note"
  lines = [head, "-" * len(head)]
  for r in rows:
    if r.get("skipped"):
      lines.append(f"{r['name']:<44} {'skipped':>18} {'':>8} {'':>6} {'':>6}  {r['skipped']}")
      continue
    value = f"{r['value']:,.1f} {r['unit']}"
    note = "; ".join(x for x in (f"vs {r['reference']}" if r.get("reference") else "", r.get("note") or "") if x)
    lines.append(
      f"{r['name']:<44} {value:>18} {_fmt(r.get('tflops'), '8.2f'):>8} "
      f"{_fmt(r.get('mfu'), '6.3f'):>6} {_fmt(r.get('ratio'), '6.2f'):>6}  {note}"
    )
  return "\n".join(lines)


def _order(name: str) -> int:
  """A row's place in the table: ceilings, SFT settings, decode."""
  names = (
    ["matmul", "copy", "attention"] + [f"sft {b}/{m}" for b, m in SFT_SETTINGS] + ["decode Sampler", "decode slot"]
  )
  return next(i for i, n in enumerate(names) if name.startswith(n))


def _ref(rows: list, name: str) -> dict | None:
  return next((r for r in rows if r["name"] == name), None)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="toy shapes (CPU, a couple of minutes)")
  p.add_argument("--out", default="gpu_suite.json", help="JSON file of every row")
  p.add_argument(
    "--budget_s", type=float, default=450.0, help="seconds after which the remaining rows are skipped with a note"
  )
  p.add_argument("--skip_torch", action="store_true", help="no transformers + torch references")
  p.add_argument("--torch_only", action="store_true", help=argparse.SUPPRESS)  # The child.
  args = p.parse_args(argv)
  s = TINY if args.tiny else REAL
  budget = Budget(args.budget_s)
  if args.torch_only:
    result = {"rows": torch_rows(s, args.tiny, budget)}
    with open(args.out, "w") as f:
      json.dump(result, f)
    return result
  print("torch references (child process) ...", file=sys.stderr, flush=True)
  torch_ref = torch_child(args, budget)
  import jax
  from codevision_jax.runtime import run_setup

  _, platform, kind = _device()
  print(
    f"jax {jax.__version__} on {platform} ({kind}); {'tiny' if args.tiny else 'real'} shapes; "
    f"budget {args.budget_s:.0f} s",
    file=sys.stderr,
    flush=True,
  )
  rows: list = []
  run_rows(budget, rows, [("matmul ceiling", lambda: matmul_row(s)), ("copy ceiling", lambda: copy_row(s))])
  run_rows(budget, rows, [("attention forms", attention_rows)])
  # Priority order (what a spent budget skips last): the platform's own backend at full remat
  # and xla/full, then decode, then the other settings; the table keeps the canonical order.
  auto_config = sft_config(s, "auto", "full")
  auto = run_setup.attention_backend(auto_config.model)
  first = [(auto, "full")] + [x for x in (("xla", "full"),) if x != (auto, "full")]
  sft_rows(s, budget, rows, _ref(torch_ref, TORCH_SFT), first)
  decode_rows(s, budget, rows, _ref(torch_ref, TORCH_DECODE))
  sft_rows(s, budget, rows, _ref(torch_ref, TORCH_SFT), [x for x in SFT_SETTINGS if x not in first])
  rows = sorted(rows, key=lambda r: _order(r["name"])) + torch_ref
  result = {
    "device": f"{platform} ({kind})",
    "jax": jax.__version__,
    "attention_auto": auto,
    "scan_layers": bool(auto_config.model.get("scan_layers", False)),
    "shapes": dataclasses.asdict(s),
    "tiny": args.tiny,
    "budget_s": args.budget_s,
    "wall_s": round(budget.spent(), 1),
    "rows": rows,
  }
  print(f"\n{platform} ({kind}), jax {jax.__version__}; {budget.spent():.0f} s")
  print(table(rows))
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
