"""The one attention function every module calls, with a backend choice.

Shapes: q [B, T, H, D], k and v [B, S, K, D] with H a multiple of K (grouped-query attention),
or [B, K, S, D] with `kv_layout="bksd"` (the sampler's key/value cache: a decode step reads it
without a transpose). Returns [B, T, H, D].

Which keys a query sees is said by `mask`, in one of two ways:
* an `AttentionMask`, the *form*: causal (query i sees keys j <= i + S - T), segment ids (a query
  sees only keys of its own segment; with `padding`, id 0 marks padding tokens, which no query
  sees) and a static bound on the segments per row. The model builds this, never the dense
  square; each backend turns it into what its kernel takes (`text_mask`, `segment_mask`).
* a dense boolean array broadcastable to [B, 1, T, S] (True = may attend): the sampler's steps over
  its KV cache, whose per-row fill has no kernel mask type; these run on "xla".
(`Masks`, a dense mask with its causal/segment form, and the `causal`/`segment_ids` arguments are
the older spellings of the same, kept for callers that have them.)

Backends (`BACKENDS`; `resolve_backend` turns "auto" into the platform's choice at model build):
* "xla" (CPU's choice, all platforms): matmuls + float32 softmax, numerically what transformers'
  eager attention computes; it builds the dense mask of a form (`AttentionMask.dense_mask`). Fully
  masked rows (left padding) give a uniform average, as there.
* "cudnn" (NVIDIA GPUs' choice): the fused cuDNN kernel, handed the form's mask *type*, never a
  mask array: causal -> `jax.nn.dot_product_attention(is_causal=True)`; segments (padding, packed
  sequences, the vision tower's images and windows) -> cuDNN's packed layout, per-row segment
  offsets and lengths [B, M] (`segment_runs`) with the PADDING(_CAUSAL) mask type, through
  `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(q_offsets=, kv_offsets=)`:
  JAX 0.10 and 0.11 have no segment ids in `jax.nn.dot_product_attention` (it takes is_causal and
  per-row lengths only), and the packed layout needs a Hopper or newer GPU. Tokens outside every
  segment (padding) get zeros, forward and backward. M is the form's static `max_segments`; a
  batch with more segments in a row stops the run with an error naming the bound. Anything cuDNN
  cannot take runs on "xla" and says why once per process (`cudnn_fallback`): 32-bit inputs, a
  step over the KV cache, a dense mask, segments without a bound, or the packed layout off Hopper.
* "splash" (TPUs' choice): the Pallas Splash kernel of `jax.experimental.pallas.ops.tpu`
  (`make_splash_mqa` per key/value head, vmapped over batch and heads), with a `CausalMask` or
  `FullMask` and `SegmentIds`; sequences are padded to its block size and the head dim to 128.
  It runs where the causal/segment form is given and there is no KV cache; a decode or prefill
  step over the cache (`kv_layout="bksd"`) and a call with only a dense mask use "xla". Off TPU
  it runs in Pallas interpret mode when CVJ_SPLASH_INTERPRET=1 (tests on CPU; slow).
  Under a multi-device mesh the kernel is not partitioned by XLA (no shard_map here yet).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

BACKENDS = ("xla", "cudnn", "splash")
CHOICES = ("auto",) + BACKENDS
PLATFORM_BACKENDS = {"gpu": "cudnn", "tpu": "splash", "cpu": "xla"}
INTERPRET_ENV = "CVJ_SPLASH_INTERPRET"
MAX_SEGMENTS = 8  # Least default bound on the segments of one row (cuDNN's packed layout).
TOKENS_PER_SEGMENT = 512  # The default bound grows by one segment per this many tokens of a row.
_SPLASH_BLOCK = 128  # Sequence and head-dim multiple the Splash kernel tiles by.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_log = logging.getLogger(__name__)
_FALLBACKS_SAID: set = set()


def resolve_backend(name: str, platform: str) -> str:
  """The backend `name` means on `platform` (a JAX platform: "cpu", "gpu", "tpu"): "auto" gives
  cudnn on GPUs, splash on TPUs and xla elsewhere; any other choice is returned as it is."""
  if name not in CHOICES:
    raise ValueError(f"model.attention_backend {name!r} is not one of {CHOICES}")
  return PLATFORM_BACKENDS.get(platform, "xla") if name == "auto" else name


def splash_interpret() -> bool:
  """Whether Splash runs in Pallas interpret mode (any platform; CVJ_SPLASH_INTERPRET=1)."""
  return os.environ.get(INTERPRET_ENV, "") not in ("", "0")


# ---- the mask form ---------------------------------------------------------------------------------


class SegmentRuns(NamedTuple):
  """cuDNN's packed-layout description of segment ids [B, T] (`segment_runs`): offsets [B, M + 1]
  (each run's first token, -1 past the row's runs), lengths [B, M] (-1 past them), count [B] (runs
  in each row, also those past M) and member [B, T] (the tokens inside the first M runs)."""

  offsets: jax.Array
  lengths: jax.Array
  count: jax.Array
  member: jax.Array


@struct.dataclass
class AttentionMask:
  """Which keys each query may attend to, as a form kernels take: see the module docstring.

  segments: ids [B, T] int, or None; kv_segments: the keys' ids [B, S] when they are not the
  queries' (None: the same); causal (static): query i sees keys j <= i + S - T; padding (static):
  id 0 marks padding tokens (no query sees them; a padding query's output is unspecified: "xla"
  gives what transformers does, every earlier real key); max_segments (static): a bound on the
  runs of equal ids (padding excluded) in one row, for cuDNN's packed layout (0: none known);
  runs: `segment_runs` of `segments`, computed once per forward by `prepared` (None: not yet);
  dense: the dense mask, likewise computed once for "xla" (None: not yet)."""

  segments: jax.Array | None = None
  kv_segments: jax.Array | None = None
  runs: SegmentRuns | None = None
  dense: jax.Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)
  padding: bool = struct.field(pytree_node=False, default=False)
  max_segments: int = struct.field(pytree_node=False, default=0)

  def segment_pair(self) -> tuple | None:
    """(q_ids, kv_ids), or None without segments."""
    if self.segments is None:
      return None
    return self.segments, self.segments if self.kv_segments is None else self.kv_segments

  def dense_mask(self, t: int, s: int) -> jax.Array:
    """The boolean mask [B or 1, 1, T, S] this form says (what "xla" applies)."""
    if self.dense is not None:
      return self.dense
    mask = jnp.ones((1, 1, t, s), bool)
    if self.causal:
      mask = jnp.tril(mask, k=s - t)
    pair = self.segment_pair()
    if pair is not None:
      q_ids, kv_ids = pair
      same = q_ids[:, :, None] == kv_ids[:, None, :]
      if self.padding:  # Padding keys are seen by no one; padding queries see every real key.
        same = (kv_ids > 0)[:, None, :] & (same | (q_ids == 0)[:, :, None])
      mask = mask & same[:, None]
    return mask

  def prepared(self, backend: str, dtype=jnp.bfloat16) -> "AttentionMask":
    """This form with what `backend` derives from it for inputs of `dtype` computed once (before
    the layers use it): the dense mask for "xla" (and for "cudnn" where it cannot take the
    segments), the segment runs and their bound's check for "cudnn"."""
    if (
      backend == "cudnn"
      and self.segments is not None
      and (
        not cudnn_takes(dtype) or not self.max_segments or self.kv_segments is not None or not packed_layout_supported()
      )
    ):
      backend = "xla"
    if backend == "xla" and self.dense is None and self.segments is not None:
      t = self.segments.shape[1]
      s = t if self.kv_segments is None else self.kv_segments.shape[1]
      return self.replace(dense=self.dense_mask(t, s))
    if backend == "cudnn" and self.runs is None and self.segments is not None and self.max_segments:
      return self.replace(runs=checked_runs(self.segments, self.max_segments, self.padding))
    return self


def segment_bound(length: int) -> int:
  """The default bound on the segments of a row of `length` tokens: one per `TOKENS_PER_SEGMENT`
  tokens, at least `MAX_SEGMENTS` (cuDNN's cost grows with the bound: empty segments still take
  thread blocks and softmax statistics)."""
  return max(MAX_SEGMENTS, length // TOKENS_PER_SEGMENT)


def text_mask(attention_mask: jax.Array | None, *, max_segments: int | None = None) -> AttentionMask:
  """The decoder's causal form of an attention mask [B, T] (0 on padding, else the token's
  segment: 1, or 1, 2, ... for sequences packed in a row); None: causal only. `max_segments`
  bounds the segments (contiguous runs of one id) of a row (None: `segment_bound(T)`)."""
  if attention_mask is None:
    return AttentionMask(causal=True)
  if max_segments is None:
    max_segments = segment_bound(attention_mask.shape[1])
  return AttentionMask(padding_segments(attention_mask), causal=True, padding=True, max_segments=max_segments)


def segment_mask(ids: jax.Array, *, max_segments: int = 0) -> AttentionMask:
  """The bidirectional form of segment ids [B, N] (every id a segment; the vision tower's images
  and windows), `max_segments` bounding the runs of a row (0: no bound known)."""
  return AttentionMask(ids, max_segments=max_segments)


@struct.dataclass
class Masks:
  """A dense mask with its causal/segment form, passed where a dense `mask` goes.

  dense: boolean broadcastable to [B, 1, T, S]; segment_ids: (q_ids [B, T], kv_ids [B, S]) int
  or None; causal: whether the dense mask includes the causal one (static)."""

  dense: jax.Array
  segment_ids: tuple | None = None
  causal: bool = struct.field(pytree_node=False, default=False)


def padding_segments(attention_mask: jax.Array) -> jax.Array:
  """Segment ids [B, T] int32 of an attention mask: its values (1 on tokens, or 1, 2, ... per
  packed sequence; 0 on padding, which then attends to padding only: no query row is empty)."""
  return attention_mask.astype(jnp.int32)


def segment_runs(ids: jax.Array, m: int, padding: bool) -> SegmentRuns:
  """The runs of equal ids in each row of ids [B, T] (with `padding`, id 0 is no run), as
  cuDNN's packed layout takes them: the first `m` runs' offsets and lengths (see `SegmentRuns`).
  Runs, not ids, are the segments: a row's segments must be contiguous (the packer's are)."""
  b, t = ids.shape
  ids = ids.astype(jnp.int32)
  real = ids != 0 if padding else jnp.ones_like(ids, bool)
  changed = jnp.concatenate([jnp.ones((b, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
  start = real & changed
  run = jnp.cumsum(start, axis=1, dtype=jnp.int32) - 1
  rows = jnp.arange(b)[:, None]
  kept = run < m
  offsets = (
    jnp.full((b, m + 1), -1, jnp.int32)
    .at[rows, jnp.where(start & kept, run, m + 1)]
    .set(jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), mode="drop")
  )
  member = real & kept
  lengths = jnp.zeros((b, m), jnp.int32).at[rows, jnp.where(member, run, m)].add(1, mode="drop")
  count = jnp.sum(start, axis=1, dtype=jnp.int32)
  lengths = jnp.where(jnp.arange(m) < count[:, None], lengths, -1)
  return SegmentRuns(offsets, lengths, count, member)


def _too_many_segments(most, bound) -> None:
  raise ValueError(
    f"a row of this batch holds {int(most)} attention segments (sequences packed in a row, or "
    f"padding inside one), more than the {int(bound)} that cuDNN attention's packed layout was "
    "built for: pass a larger max_segments to the model's forward (default "
    f"models.attention.segment_bound: one per {TOKENS_PER_SEGMENT} tokens of a row, at least "
    f"{MAX_SEGMENTS}), pack fewer records per row (data.packing), or set "
    "model.attention_backend=xla"
  )


def checked_runs(ids: jax.Array, max_segments: int, padding: bool) -> SegmentRuns:
  """`segment_runs` with M = max(2, max_segments) (cuDNN reads offsets only when M > 1), and a
  check, on the device, that no row holds more than M runs: a batch that does stops with an error
  naming the bound (raised by a host callback that runs only then)."""
  m = max(2, max_segments)
  runs = segment_runs(ids, m, padding)
  most = jnp.max(runs.count)
  jax.lax.cond(most > m, lambda n: jax.debug.callback(_too_many_segments, n, m), lambda n: None, most)
  return runs


# ---- dispatch ---------------------------------------------------------------------------------------


def cudnn_takes(dtype) -> bool:
  """Whether cuDNN's fused kernel takes inputs of `dtype` (16-bit floats only)."""
  return jnp.dtype(dtype) in [jnp.dtype(d) for d in _CUDNN_DTYPES]


def cudnn_fallback(reason: str) -> None:
  """Says once per process that cuDNN attention cannot take a call, and why (it runs on xla)."""
  if reason not in _FALLBACKS_SAID:
    _FALLBACKS_SAID.add(reason)
    _log.warning("cuDNN attention: %s; those calls run on the xla backend", reason)


def dot_product_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  mask,
  scale: float,
  backend: str = "xla",
  kv_layout: str = "bskd",
  causal: bool = False,
  segment_ids: tuple | None = None,
) -> jax.Array:
  """Attention of q to k/v under `mask` (an `AttentionMask` form, a dense boolean array, a
  `Masks`, or None with `causal`/`segment_ids` alone); see the module docstring."""
  b, t, h, d = q.shape
  if kv_layout not in ("bskd", "bksd"):
    raise ValueError(f"kv_layout {kv_layout!r}: expected 'bskd' or 'bksd'")
  kv_heads = k.shape[2] if kv_layout == "bskd" else k.shape[1]
  s = k.shape[1] if kv_layout == "bskd" else k.shape[2]
  if h % kv_heads:
    raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
  if backend not in BACKENDS:
    raise ValueError(f"attention backend {backend!r} is not available; choose one of {CHOICES}")
  form, dense = _form_and_dense(mask, causal, segment_ids)
  if (
    backend == "splash"
    and kv_layout == "bskd"
    and form is not None
    and (dense is None or form.causal or form.segments is not None)
  ):
    return _splash_attention(q, k, v, scale, form.causal, form.segment_pair())
  if backend == "cudnn":
    reason = _cudnn_refusal(q, t, s, kv_layout, form, dense)
    if reason is None:
      return _cudnn_attention(q, k, v, scale, form)
    cudnn_fallback(reason)
  if dense is None and form is not None:
    dense = form.dense_mask(t, s)
  return _xla_attention(q, k, v, dense, scale, kv_layout)


def _form_and_dense(mask, causal, segment_ids) -> tuple[AttentionMask | None, jax.Array | None]:
  """(the form, the dense mask) of any spelling of `mask`; either may be None."""
  if isinstance(mask, AttentionMask):
    return mask, None
  if isinstance(mask, Masks):
    causal, segment_ids, mask = mask.causal, mask.segment_ids, mask.dense
  form = None
  if causal or segment_ids is not None:
    q_ids, kv_ids = segment_ids if segment_ids is not None else (None, None)
    form = AttentionMask(q_ids, kv_ids, causal=causal)
  return form, mask


def _cudnn_refusal(q, t: int, s: int, kv_layout: str, form, dense) -> str | None:
  """Why cuDNN cannot take this call (None: it can)."""
  if not cudnn_takes(q.dtype):
    return f"{jnp.dtype(q.dtype).name} inputs (the fused kernel takes bfloat16/float16 only)"
  if kv_layout != "bskd":
    return "a step over the sampler's KV cache (kv_layout bksd; cuDNN would need it transposed)"
  if dense is not None:
    return "a dense mask array was given (no cuDNN mask type says it)"
  if form is None:
    return None
  if form.causal and t != s and form.segments is None:
    return f"causal attention of {t} queries to {s} keys (cuDNN's causal mask is for T = S)"
  if form.segments is None:
    return None
  if form.kv_segments is not None or t != s:
    return "keys with segments other than the queries' (the packed layout pairs them)"
  if not form.max_segments and form.runs is None:
    return "segments without a static bound on their number per row (max_segments)"
  if not packed_layout_supported():
    return "segments need cuDNN's packed layout, which needs a Hopper or newer GPU"
  return None


def packed_layout_supported() -> bool:
  """Whether this process's GPU runs cuDNN's packed (segment offsets) layout: Hopper or newer."""
  try:
    from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=import-outside-toplevel

    return bool(fa.check_compute_capability("9.0"))
  except Exception:  # noqa: BLE001 -- no CUDA backend, or JAX moved the module: not supported.
    return False


def _cudnn_attention(q, k, v, scale, form: AttentionMask | None):
  """cuDNN with the form's mask type: no mask, causal, or segments (packed layout; tokens outside
  the segments are zeroed on the way in and out, so neither their outputs nor their gradients
  carry what the kernel leaves there)."""
  if form is None or form.segments is None:
    return cudnn_kernel(q, k, v, scale=scale, causal=bool(form and form.causal))
  runs = form.runs
  if runs is None:
    runs = checked_runs(form.segments, form.max_segments, form.padding)
  keep = runs.member[:, :, None, None]
  q, k, v = (jnp.where(keep, x, jnp.zeros((), x.dtype)) for x in (q, k, v))
  out = cudnn_kernel(q, k, v, scale=scale, causal=form.causal, offsets=runs.offsets, lengths=runs.lengths)
  return jnp.where(keep, out, jnp.zeros((), out.dtype))


def cudnn_kernel(q, k, v, *, scale: float, causal: bool, offsets=None, lengths=None):
  """The cuDNN call itself (the seam tests replace: on CPU there is no cuDNN). Without offsets:
  `jax.nn.dot_product_attention(is_causal=causal, implementation="cudnn")`. With offsets [B, M+1]
  and lengths [B, M]: JAX's cuDNN wrapper with the packed layout and the PADDING(_CAUSAL) mask
  type, each segment attending within itself."""
  if offsets is None:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation="cudnn")
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=import-outside-toplevel

  mask_type = fa.MaskType.PADDING_CAUSAL if causal else fa.MaskType.PADDING
  return fa.dot_product_attention(
    q, k, v, None, None, lengths, lengths, offsets, offsets, scale=scale, mask_type=mask_type, qkv_layout="BTNH"
  )


def dense_mask(t: int, s: int, causal: bool, segment_ids: tuple | None) -> jax.Array:
  """The boolean mask [B or 1, 1, T, S] of the causal/segment form (causal: the last T of S)."""
  q_ids, kv_ids = segment_ids if segment_ids is not None else (None, None)
  return AttentionMask(q_ids, kv_ids, causal=causal).dense_mask(t, s)


def _xla_attention(q, k, v, mask, scale, kv_layout="bskd"):
  b, t, h, d = q.shape
  if kv_layout == "bskd":
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # -> [B, K, S, D]
  kv_heads, s = k.shape[1], k.shape[2]
  groups = h // kv_heads
  # Keys and values held wider than the queries (the decode engine's float32 copy of a bfloat16
  # cache on CPU, `DecodeEngine.round_upcast`): both products are rounded to the queries' dtype,
  # which is what a dot at that dtype gives on XLA's CPU backend (operands converted to float32,
  # a float32 dot, the result rounded), so the copy changes no bit.
  wide = jnp.dtype(k.dtype).itemsize > jnp.dtype(q.dtype).itemsize
  # Heads leading, as [B, K, G*T, D] x [B, K, D, S]: batched matmuls with leading batch dims run
  # 2-3x faster on XLA's CPU backend than the same einsums with interleaved batch dims.
  q = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * t, d)
  scores = jnp.matmul(q, k.swapaxes(-1, -2))
  scores = (scores.astype(q.dtype) if wide else scores) * jnp.asarray(scale, q.dtype)
  scores = scores.astype(jnp.float32).reshape(b, kv_heads, groups, t, s)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, 1, t, s))[:, :, None]  # [B, 1, 1, T, S]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype if wide else v.dtype).reshape(b, kv_heads, groups * t, s)
  out = jnp.matmul(probs, v)  # [B, K, G*T, D]
  out = out.astype(q.dtype) if wide else out
  return out.reshape(b, kv_heads, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


class _SplashShape(NamedTuple):
  groups: int  # query heads per key/value head
  t: int  # padded query length
  s: int  # padded key length
  causal: bool
  interpret: bool


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


@functools.lru_cache(maxsize=64)
def _splash_kernel(shape: _SplashShape):
  """The MQA Splash kernel of one key/value head: q [G, T, D], k and v [S, D]."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  mask_cls = sa.CausalMask if shape.causal else sa.FullMask
  heads = sa.MultiHeadMask([mask_cls((shape.t, shape.s)) for _ in range(shape.groups)])
  block_q = max(b for b in (512, 256, 128) if shape.t % b == 0)
  block_kv = max(b for b in (512, 256, 128) if shape.s % b == 0)
  blocks = sa.BlockSizes(
    block_q=block_q,
    block_kv=block_kv,
    block_kv_compute=block_kv,
    block_q_dkv=block_q,
    block_kv_dkv=block_kv,
    block_kv_dkv_compute=block_kv,
    block_q_dq=block_q,
    block_kv_dq=block_kv,
  )
  return sa.make_splash_mqa(heads, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=shape.interpret)


def _splash_attention(q, k, v, scale, causal, segment_ids):
  """Splash over [B, T, H, D] q and [B, S, K, D] k/v: pads T and S to the block (padding gets
  segment -1, so it attends to itself only) and D to 128 (zeros leave the scores alone)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  b, t, h, d = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  if causal and t != s:
    raise ValueError(f"splash causal attention needs as many queries as keys, got {t} and {s}")
  tp, sp, dp = (_round_up(n, _SPLASH_BLOCK) for n in (t, s, d))
  if segment_ids is None:
    segment_ids = (jnp.zeros((b, t), jnp.int32), jnp.zeros((b, s), jnp.int32))
  q_ids, kv_ids = (
    jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, n - ids.shape[1])), constant_values=-1)
    for ids, n in zip(segment_ids, (tp, sp))
  )
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, h // kv_heads, d)
  q = jnp.pad(q.transpose(0, 2, 3, 1, 4), ((0, 0),) * 3 + ((0, tp - t), (0, dp - d)))
  k, v = (jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, sp - s), (0, dp - d))) for x in (k, v))  # [B, K, S, D]
  kernel = _splash_kernel(_SplashShape(h // kv_heads, tp, sp, bool(causal), splash_interpret()))
  per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over key/value heads
  out = jax.vmap(per_head)(q, k, v, sa.SegmentIds(q_ids, kv_ids))  # [B, K, G, T, D]
  return out[:, :, :, :t, :d].transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
