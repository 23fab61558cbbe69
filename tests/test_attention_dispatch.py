"""The cudnn backend is handed mask *forms*, never a dense mask: which kernel call each call site
gets (recorded from the one cuDNN seam, `attention.cudnn_kernel`), what the segment runs say
(checked against an emulation of cuDNN's documented packed-layout semantics, which must equal the
xla path on every real token, through the whole model too), that the lowered program of a cudnn
model holds no [B, 1, T, T] boolean array where the xla one does, that what cuDNN cannot take runs
on xla and says so once, and that a row with more segments than the bound stops the run.

There is no cuDNN on CPU: the seam is replaced by the emulation, and cuDNN's dtype gate
(`cudnn_takes`) lets float32 through so that the comparisons are exact to float32 rounding.
The numeric comparison with the real kernel runs on a GPU (`benchmarks.attention_parity`)."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_reference as H
from codevision_jax.models import VLConfig, attention, build_model
from codevision_jax.models.vision import Segments, run_count, segment_attention


def emulated_cudnn(q, k, v, *, scale, causal, offsets=None, lengths=None):
  """What cuDNN computes, from its documented semantics: without offsets, plain or causal
  (top-left) attention; with offsets [B, M+1] and lengths [B, M], segment m of a row is tokens
  offsets[m] ... offsets[m] + lengths[m] - 1 (length -1: no segment), attending within itself
  (causally with `causal`); tokens outside every segment get zeros."""
  b, t, h, d = q.shape
  s = k.shape[1]
  if offsets is None:
    mask = jnp.tril(jnp.ones((t, s), bool)) if causal else jnp.ones((t, s), bool)
    mask = jnp.broadcast_to(mask, (b, t, s))
  else:
    m = lengths.shape[1]
    start, length = offsets[:, :m, None], lengths[:, :, None]

    def inside(n):
      pos = jnp.arange(n)[None, None, :]
      return (pos >= start) & (pos < start + length) & (length > 0)  # [B, M, n]

    mask = jnp.any(inside(t)[:, :, :, None] & inside(s)[:, :, None, :], axis=1)
    if causal:
      mask = mask & jnp.tril(jnp.ones((t, s), bool))
  out = jax.nn.dot_product_attention(
    q.astype(jnp.float32),
    k.astype(jnp.float32),
    v.astype(jnp.float32),
    mask=mask[:, None],
    scale=scale,
    implementation="xla",
  )
  return jnp.where(jnp.any(mask, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)


@pytest.fixture
def cudnn(monkeypatch):
  """The cudnn backend on CPU: the emulated kernel (recording each call), float32 admitted, the
  packed layout supported; yields the list of calls, each a dict of what the kernel was given."""
  calls = []

  def kernel(q, k, v, *, scale, causal, offsets=None, lengths=None):
    calls.append(
      dict(
        q=q.shape,
        k=k.shape,
        causal=causal,
        packed=offsets is not None,
        segments=None if lengths is None else lengths.shape[1],
      )
    )
    return emulated_cudnn(q, k, v, scale=scale, causal=causal, offsets=offsets, lengths=lengths)

  monkeypatch.setattr(attention, "cudnn_kernel", kernel)
  monkeypatch.setattr(attention, "cudnn_takes", lambda dtype: True)
  monkeypatch.setattr(attention, "packed_layout_supported", lambda: True)
  monkeypatch.setattr(attention, "_FALLBACKS_SAID", set())
  return calls


def _qkv(b, t, h, kv, d, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (
    jax.random.normal(ks[0], (b, t, h, d)),
    jax.random.normal(ks[1], (b, t, kv, d)),
    jax.random.normal(ks[2], (b, t, kv, d)),
  )


def test_segment_runs_give_cudnn_offsets_and_lengths():
  ids = jnp.asarray(
    [
      [0, 0, 1, 1, 1, 1],  # Left padding: one segment at 2.
      [1, 1, 1, 0, 0, 0],  # Right padding.
      [1, 1, 2, 3, 3, 0],  # Three packed sequences.
      [1, 2, 3, 4, 4, 4],
    ]
  )  # Four: over a bound of 3.
  runs = attention.segment_runs(ids, 3, padding=True)
  np.testing.assert_array_equal(runs.offsets, [[2, -1, -1, -1], [0, -1, -1, -1], [0, 2, 3, -1], [0, 1, 2, -1]])
  np.testing.assert_array_equal(runs.lengths, [[4, -1, -1], [3, -1, -1], [2, 1, 2], [1, 1, 1]])
  np.testing.assert_array_equal(runs.count, [1, 1, 3, 4])
  np.testing.assert_array_equal(
    runs.member, [[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]
  )
  vision = attention.segment_runs(jnp.asarray([[0, 0, 0, 1, 1, 2]]), 3, padding=False)
  np.testing.assert_array_equal(vision.offsets, [[0, 3, 5, -1]])  # Id 0 is a segment here.
  np.testing.assert_array_equal(vision.lengths, [[3, 2, 1]])
  assert run_count(np.asarray([4, 4, 7, 7, 7, 2])) == 3 and run_count(np.zeros((0,))) == 0
  # The decoder's default bound: one segment per 512 tokens of a row, at least 8.
  assert [attention.segment_bound(t) for t in (64, 4096, 5000, 32768)] == [8, 8, 9, 64]
  assert attention.text_mask(jnp.ones((1, 5000), jnp.int32)).max_segments == 9


@pytest.mark.parametrize(
  "rows",
  [
    [[1] * 40, [0] * 11 + [1] * 29],  # No padding; left padding.
    [[1] * 25 + [0] * 15, [1] * 12 + [2] * 20 + [3] * 5 + [0] * 3],  # Right padding; packed.
  ],
)
def test_text_form_on_cudnn_equals_xla_with_gradients(cudnn, rows):
  am = jnp.asarray(rows)
  b, t = am.shape
  q, k, v = _qkv(b, t, 4, 2, 16)
  real = (am > 0)[:, :, None, None]

  def loss(q, k, v, backend):
    form = attention.text_mask(am).prepared(backend)
    out = attention.dot_product_attention(q, k, v, mask=form, scale=0.25, backend=backend)
    return jnp.sum(jnp.where(real, out, 0) * jnp.cos(jnp.arange(16.0))), out

  (_, got), g_got = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, "cudnn")
  (_, want), g_want = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, "xla")
  np.testing.assert_allclose(jnp.where(real, got, 0), jnp.where(real, want, 0), atol=1e-5)
  for a, b_ in zip(g_got, g_want):
    np.testing.assert_allclose(a, b_, atol=1e-5)
  assert np.all(np.asarray(got)[~np.asarray(real[..., 0, 0])] == 0)  # Padding: zeros.
  assert calls_are(cudnn, causal=True, packed=True, segments=attention.MAX_SEGMENTS)


def calls_are(calls, **want) -> bool:
  assert calls, "the cuDNN seam was never called"
  for c in calls:
    assert {k: c[k] for k in want} == want, c
  return True


def test_causal_without_padding_is_cudnns_causal_mask_type(cudnn):
  q, k, v = _qkv(2, 24, 4, 2, 16)
  got = attention.dot_product_attention(q, k, v, mask=attention.text_mask(None), scale=0.25, backend="cudnn")
  want = attention.dot_product_attention(q, k, v, mask=attention.text_mask(None), scale=0.25)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert cudnn == [dict(q=(2, 24, 4, 16), k=(2, 24, 2, 16), causal=True, packed=False, segments=None)]


def test_vision_segments_on_cudnn_are_the_packed_layout(cudnn):
  rng = np.random.default_rng(0)
  ids = np.repeat(np.arange(6), [64, 30, 64, 12, 100, 50])  # Images / windows: contiguous runs.
  q, k, v = (jnp.asarray(rng.normal(size=(len(ids), 2, 16)), jnp.float32) for _ in range(3))
  segments = Segments.of(ids, 128)
  assert segments.count == 6
  got = segment_attention(q, k, v, segments, scale=0.25, backend="cudnn")
  want = segment_attention(q, k, v, segments, scale=0.25, backend="xla")  # The band.
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert cudnn == [dict(q=(1, len(ids), 2, 16), k=(1, len(ids), 2, 16), causal=False, packed=True, segments=6)]


def _hf_config(model_type):
  kw = dict(window_size=56) if model_type == "qwen2_5_vl" else dict(deepstack=(1,))
  return VLConfig.from_hf_dict(H.tiny_hf_config(model_type, **kw).to_dict())


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_the_model_on_cudnn_gives_the_xla_logits_and_hands_cudnn_forms_only(cudnn, caplog, model_type):
  """Images in left-padded rows through the host-side call: the vision tower's images (and
  windows) and the decoder's padded causal rows all reach cuDNN as forms, nothing falls back."""
  config = _hf_config(model_type)
  rng = np.random.default_rng(1)
  patch = config.vision.patch_size
  ids, mask, pv, grid = H.make_batch(rng, [[(1, 8, 8)] * 3, [(1, 4, 6)]], 3 * 2 * patch * patch)
  logits = {}
  with caplog.at_level(logging.WARNING, logger=attention.__name__):
    for backend in ("cudnn", "xla"):
      model = build_model(config, seed=0, attention_backend=backend)
      logits[backend] = np.asarray(model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(logits["cudnn"][valid], logits["xla"][valid], atol=1e-4)
  text = [c for c in cudnn if c["causal"]]
  vision = [c for c in cudnn if not c["causal"]]
  assert len(text) == config.text.num_hidden_layers and len(vision) == config.vision.depth
  assert calls_are(
    text, packed=True, q=(2, ids.shape[1], config.text.num_attention_heads, config.text.resolved_head_dim)
  )
  assert calls_are(vision, packed=True)
  assert "cuDNN attention" not in caplog.text  # No call fell back.


def test_packed_rows_through_the_scanned_model_on_cudnn_give_the_xla_logits(cudnn):
  config = _hf_config("qwen2_5_vl")
  ids = np.random.default_rng(2).integers(0, 240, size=(2, 64)).astype(np.int32)
  segments = np.asarray([[1] * 20 + [2] * 30 + [3] * 10 + [0] * 4, [1] * 64], np.int32)
  logits = {}
  for backend in ("cudnn", "xla"):
    model = build_model(config, seed=0, attention_backend=backend, scan_layers=True)
    forward = jax.jit(lambda i, m, model=model: model.forward(i, attention_mask=m))
    logits[backend] = np.asarray(forward(jnp.asarray(ids), jnp.asarray(segments)))
  real = segments > 0
  np.testing.assert_allclose(logits["cudnn"][real], logits["xla"][real], atol=1e-4)
  assert calls_are(cudnn, causal=True, packed=True, segments=attention.MAX_SEGMENTS)


def _bool_squares(text: str, t: int) -> list:
  return re.findall(rf"tensor<[0-9x]*{t}x{t}xi1>", text)


def test_no_dense_square_mask_in_the_lowered_cudnn_program(monkeypatch):
  """The forward of a padded batch, lowered for cudnn with a kernel that takes no mask: no
  boolean [.., T, T] array anywhere; the xla lowering has them (what the check would see)."""
  monkeypatch.setattr(attention, "cudnn_kernel", lambda q, k, v, *, scale, causal, offsets=None, lengths=None: q)
  monkeypatch.setattr(attention, "packed_layout_supported", lambda: True)
  config = _hf_config("qwen2_5_vl")
  t = 72
  ids = jnp.zeros((2, t), jnp.int32)
  am = jnp.asarray([[1] * t, [0] * 9 + [1] * (t - 9)])
  texts = {}
  for backend in ("cudnn", "xla"):
    model = build_model(config, seed=0, attention_backend=backend, param_dtype=jnp.bfloat16)
    texts[backend] = jax.jit(lambda i, m, model=model: model.forward(i, attention_mask=m)).lower(ids, am).as_text()
  assert not _bool_squares(texts["cudnn"], t)
  assert _bool_squares(texts["xla"], t)


def test_what_cudnn_cannot_take_runs_on_xla_and_says_so_once(cudnn, caplog):
  q, k, v = _qkv(2, 16, 4, 2, 16)
  dense = jnp.tril(jnp.ones((16, 16), bool))[None, None]
  unbounded = attention.AttentionMask(jnp.ones((2, 16), jnp.int32), causal=True)
  with caplog.at_level(logging.WARNING, logger=attention.__name__):
    for _ in range(2):
      np.testing.assert_array_equal(
        attention.dot_product_attention(q, k, v, mask=dense, scale=0.25, backend="cudnn"),
        attention.dot_product_attention(q, k, v, mask=dense, scale=0.25, backend="xla"),
      )
      np.testing.assert_array_equal(
        attention.dot_product_attention(q, k, v, mask=unbounded, scale=0.25, backend="cudnn"),
        attention.dot_product_attention(q, k, v, mask=unbounded, scale=0.25, backend="xla"),
      )
  assert not cudnn
  said = [r.getMessage() for r in caplog.records if r.name == attention.__name__]
  assert len(said) == 2, said
  assert "a dense mask array was given" in said[0]
  assert "segments without a static bound on their number per row" in said[1]


def test_vision_without_a_segment_count_runs_the_band_on_xla(cudnn, caplog):
  rng = np.random.default_rng(3)
  ids = np.repeat(np.arange(8), 64)
  q, k, v = (jnp.asarray(rng.normal(size=(len(ids), 2, 16)), jnp.float32) for _ in range(3))
  traced = jax.jit(lambda q, k, v, i: segment_attention(q, k, v, Segments.of(i, 64), scale=0.25, backend="cudnn"))
  with caplog.at_level(logging.WARNING, logger=attention.__name__):
    got = traced(q, k, v, jnp.asarray(ids))
  want = segment_attention(q, k, v, Segments(jnp.asarray(ids), 64), scale=0.25)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert not cudnn
  assert "vision segments without a static count" in caplog.text


def test_a_row_over_the_segment_bound_stops_the_run(cudnn):
  q, k, v = _qkv(1, 12, 2, 2, 8)
  am = jnp.asarray([[1, 1, 2, 2, 3, 3, 4, 4, 5, 0, 0, 0]])  # Five segments.
  run = jax.jit(
    lambda q, k, v, am, m: attention.dot_product_attention(
      q, k, v, mask=attention.text_mask(am, max_segments=m).prepared("cudnn"), scale=0.3, backend="cudnn"
    ),
    static_argnums=4,
  )
  run(q, k, v, am, 5).block_until_ready()  # Within the bound.
  with pytest.raises(Exception, match="holds 5 attention segments .* more than the 4"):
    run(q, k, v, am, 4).block_until_ready()
