"""cuDNN attention handed mask forms: parity with the xla backend, and the time of each form
against a dense boolean mask, measured in the same run (rows of `benchmarks.gpu_suite`).

    python -m benchmarks.attention_forms [--out=attention_forms.json]

Parity (`parity_rows`, bfloat16, on a GPU): the real cuDNN kernel through
`attention.dot_product_attention(backend="cudnn")` against `backend="xla"` on the same inputs, for
each form the model hands it: causal; padded rows (left and right padding, cuDNN's packed layout);
packed rows (three sequences and padding in a row); the vision tower's segments (images of 1,024
patches cut into 64-patch windows, head dim 80, `vision.segment_attention`). Each row is the max
abs difference of the outputs on real tokens and of the gradients (of a fixed projection of the
real outputs), over the xla output's max; "ok" when under `TOLERANCE` (bfloat16 rounding).

Timing (`timing_rows`): forward + backward on the issue's shape (B 4, T 4096, 16 heads, 2 KV heads,
head dim 128), median of 10 calls after one. The reference is the dense [B, 1, T, T] causal mask
handed to cuDNN (what the model did before). Then the forms: causal; padded rows through the
packed layout with a bound of `MAX_SEGMENTS` and of 2 segments per row; four packed sequences per
row with `MAX_SEGMENTS` and with 32 (what a larger bound costs); `jax.nn.dot_product_attention`'s
own causal + sequence lengths, for comparison; and padded rows on the xla backend. Ratio: dense
time over the row's.

Off NVIDIA GPUs every row is skipped with the reason (there is no cuDNN).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SHAPE = dict(b=4, t=4096, h=16, kv=2, d=128)
PARITY_SHAPE = dict(b=2, t=1024, h=16, kv=2, d=128)
VISION = dict(images=4, patches=1024, window=64, h=16, d=80)  # Qwen2.5-VL's tower: head dim 80.
TOLERANCE = 2e-2  # Max abs difference over the reference's max, bfloat16 inputs.


def gpu_reason() -> str | None:
  """Why these rows cannot run here (None: an NVIDIA GPU is present)."""
  import jax

  if jax.default_backend() != "gpu":
    return f"needs NVIDIA GPUs (cuDNN); this is {jax.default_backend()}"
  return None


def _inputs(b, t, h, kv, d, seed=0):
  import jax
  import jax.numpy as jnp

  ks = jax.random.split(jax.random.key(seed), 3)
  return tuple(
    jax.random.normal(key, shape, jnp.bfloat16) for key, shape in zip(ks, ((b, t, h, d), (b, t, kv, d), (b, t, kv, d)))
  )


def text_rows(t: int, kind: str):
  """Attention masks [2, t] (0 padding, else segment ids): "padded" (a right- and a left-padded
  row), "packed" (three sequences then padding; four sequences then padding)."""
  import numpy as np

  if kind == "padded":
    rows = [[1] * (t - t // 8) + [0] * (t // 8), [0] * (t // 5) + [1] * (t - t // 5)]
  else:
    cuts = [t // 3, t // 3 + t // 4, t - t // 10]
    ids = np.zeros((t,), np.int32)
    for i, (a, z) in enumerate(zip([0] + cuts[:-1], cuts)):
      ids[a:z] = i + 1
    rows = [ids, np.where(np.arange(t) < t - 7, 1 + (np.arange(t) * 4) // t, 0)]
  return np.asarray(rows, np.int32)


def _parity(name: str, q, k, v, real, run) -> dict:
  """A parity row: `run(q, k, v, backend)` -> [B, T, H, D] on cudnn against xla, outputs and
  gradients on real tokens (`real` [B, T, 1, 1])."""
  import jax
  import jax.numpy as jnp

  proj = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))

  def loss(q, k, v, backend):
    out = run(q, k, v, backend)
    return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0) * proj), out

  results = {}
  for backend in ("cudnn", "xla"):
    grad = jax.jit(jax.value_and_grad(lambda q, k, v, b=backend: loss(q, k, v, b), (0, 1, 2), has_aux=True))
    (_, out), grads = grad(q, k, v)
    results[backend] = (jnp.where(real, out.astype(jnp.float32), 0), [g.astype(jnp.float32) for g in grads])

  def rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-6))

  out_err = rel(results["cudnn"][0], results["xla"][0])
  grad_err = max(rel(a, b) for a, b in zip(results["cudnn"][1], results["xla"][1]))
  ok = out_err < TOLERANCE and grad_err < TOLERANCE
  return {
    "name": f"attention parity {name}",
    "value": max(out_err, grad_err),
    "unit": "rel err",
    "out_err": out_err,
    "grad_err": grad_err,
    "ok": ok,
    "note": ("ok" if ok else "MISMATCH") + f" (outputs {out_err:.1e}, gradients {grad_err:.1e})",
  }


def parity_rows() -> list:
  import jax.numpy as jnp
  import numpy as np
  from codevision_jax.models import attention
  from codevision_jax.models.vision import Segments, segment_attention

  s = PARITY_SHAPE
  q, k, v = _inputs(**s)
  rows = []
  everything = jnp.ones((s["b"], s["t"], 1, 1), bool)

  def text(mask):
    def run(q, k, v, backend):
      form = attention.text_mask(mask).prepared(backend, q.dtype)
      return attention.dot_product_attention(q, k, v, mask=form, scale=s["d"] ** -0.5, backend=backend)

    return run

  rows.append(_parity("causal", q, k, v, everything, text(None)))
  for kind in ("padded", "packed"):
    am = jnp.asarray(text_rows(s["t"], kind))
    rows.append(_parity(f"{kind} rows", q, k, v, (am > 0)[:, :, None, None], text(am)))
  vs = VISION
  n = vs["images"] * vs["patches"]
  vq, vk, vv = _inputs(1, n, vs["h"], vs["h"], vs["d"], seed=1)  # segment_attention: [N, H, D].
  for name, span in (("vision images", vs["patches"]), ("vision windows", vs["window"])):
    segments = Segments.of(np.repeat(np.arange(n // span), span), span)

    def run(q, k, v, backend, segments=segments):
      return segment_attention(q[0], k[0], v[0], segments, scale=vs["d"] ** -0.5, backend=backend)[None]

    rows.append(_parity(name, vq, vk, vv, jnp.ones((1, n, 1, 1), bool), run))
  return rows


def _time(f, *args) -> float:
  import jax

  jax.block_until_ready(f(*args))
  times = []
  for _ in range(10):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3


def timing_rows() -> list:
  import jax
  import jax.numpy as jnp
  from codevision_jax.models import attention

  s = SHAPE
  q, k, v = _inputs(**s)
  scale = s["d"] ** -0.5
  dense = jnp.tril(jnp.ones((1, 1, s["t"], s["t"]), bool))
  padded = jnp.asarray(text_rows(s["t"], "padded"))
  padded = jnp.concatenate([padded, padded])
  packed = jnp.asarray(text_rows(s["t"], "packed"))
  packed = jnp.concatenate([packed, packed])
  lengths = jnp.full((s["b"],), s["t"] - 100, jnp.int32)

  def form(mask, m=attention.MAX_SEGMENTS, backend="cudnn"):
    def f(q, k, v):
      prepared = attention.text_mask(mask, max_segments=m).prepared(backend, q.dtype)
      return attention.dot_product_attention(q, k, v, mask=prepared, scale=scale, backend=backend)

    return f

  variants = [
    (
      "dense mask (reference)",
      lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=dense, scale=scale, implementation="cudnn"),
    ),
    ("form causal", form(None)),
    (f"form padded rows, {attention.MAX_SEGMENTS} segments", form(padded)),
    ("form padded rows, 2 segments", form(padded, 2)),
    (f"form packed rows, {attention.MAX_SEGMENTS} segments", form(packed)),
    ("form packed rows, 32 segments", form(packed, 32)),
    (
      "jax causal + seq lengths",
      lambda q, k, v: jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=True,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation="cudnn",
      ),
    ),
    ("form padded rows on xla", form(padded, backend="xla")),
  ]
  rows, reference = [], None
  for name, f in variants:
    step = jax.jit(jax.grad(lambda q, k, v, f=f: f(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)))
    try:
      ms = _time(step, q, k, v)
    except Exception as e:  # noqa: BLE001 -- a form this JAX/cuDNN cannot run says so.
      rows.append(
        {"name": f"attention fwd+bwd {name}", "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:240]}"}
      )
      continue
    reference = ms if name == variants[0][0] else reference
    rows.append(
      {
        "name": f"attention fwd+bwd {name}",
        "value": ms,
        "unit": "ms",
        "ratio": reference / ms if reference else None,
        "reference": "dense mask" if reference else None,
      }
    )
  return rows


def rows() -> list:
  """Every row: parity, then timing; all skipped with the reason off NVIDIA GPUs."""
  reason = gpu_reason()
  if reason:
    return [{"name": "attention parity", "skipped": reason}, {"name": "attention fwd+bwd", "skipped": reason}]
  return parity_rows() + timing_rows()


def main(argv=None) -> list:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="attention_forms.json")
  args = p.parse_args(argv)
  result = rows()
  for r in result:
    print(
      f"{r['name']:<52} "
      + (
        f"skipped: {r['skipped']}"
        if r.get("skipped")
        else f"{r['value']:10.4g} {r['unit']}  {r.get('note') or ''}"
        + (f" ratio {r['ratio']:.2f}" if r.get("ratio") else "")
      )
    )
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
