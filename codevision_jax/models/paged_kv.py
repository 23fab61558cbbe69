"""A paged key/value cache: one pool of fixed-size pages shared by all sequences, and per sequence
a table of the pages that hold its entries (the block tables of vLLM and of JAX's Pallas
paged-attention kernels).

Layout: per layer {"k", "v"} [num_pages, kv_heads, page_size, head_dim] (a decoder with
`scan_layers` stacks them: [layers, num_pages, kv_heads, page_size, head_dim]), the layout of the
Pallas paged-attention kernels' pages (heads before entries, as the dense cache). Entry e of a
sequence lives at page `table[e // page_size]`, offset `e % page_size`; its flat entry is
`page * page_size + offset`. Page 0 is the scratch page: writes that must go nowhere (padding of
a prefill chunk, rows not decoding) go there, and table entries past a sequence's pages point
there (masked keys).

Attention over pages (`gather`) copies a row's pages into a dense [B, K, S, D] view, S = pages
in the table x page_size, in one gather: the plain form that runs on every platform. The decoder
takes a `PagedIndex` as its `cache_index` to use it (`text.TextAttention`); a decode round can
also gather its pages once (`dense_view`) and write its new entries back (`write_back`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

SCRATCH_PAGE = 0


@struct.dataclass
class PagedIndex:
  """Where a call's new keys go and which pages each row reads.

  write [B, T] int32: the flat pool entry of each new token (page * page_size + offset; padding
  and idle rows: the scratch page); table [B, n] int32: the pages row b attends over, in order
  (its entries [0, n * page_size)).
  """

  write: jax.Array
  table: jax.Array


def init_pool(
  num_layers: int, num_pages: int, page_size: int, kv_heads: int, head_dim: int, dtype, *, stacked: bool
) -> list[dict] | dict:
  """An empty pool of zeros (see the module docstring for the layout)."""
  shape = (num_pages, kv_heads, page_size, head_dim)
  if stacked:
    shape = (num_layers,) + shape
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)]


def write(pool: dict, k: jax.Array, v: jax.Array, index: PagedIndex) -> dict:
  """One layer's pool with k, v [B, T, K, D] written at `index.write`."""
  page_size, d = pool["k"].shape[2], pool["k"].shape[3]
  flat = index.write.reshape(-1)
  page, offset = flat // page_size, flat % page_size

  def put(buf, new):
    return buf.at[page, :, offset].set(new.astype(buf.dtype).reshape(-1, buf.shape[1], d))

  return {"k": put(pool["k"], k), "v": put(pool["v"], v)}


def _take(buf: jax.Array, table: jax.Array) -> jax.Array:
  """The pages `table` [B, n] of one pool array as [B, K, n * page_size, D], in one gather whose
  output is already in that order (no transpose: the pages' heads land before their entries)."""
  num_pages, kv_heads, p, d = buf.shape
  b, n = table.shape
  dnums = jax.lax.GatherDimensionNumbers(offset_dims=(1, 3, 4), collapsed_slice_dims=(0,), start_index_map=(0,))
  out = jax.lax.gather(
    buf, table[..., None], dnums, (1, kv_heads, p, d), mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS
  )  # [B, K, n, P, D]
  return out.reshape(b, kv_heads, n * p, d)


def gather(pool: dict, table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Keys and values [B, K, n * page_size, D] of the pages `table` [B, n] (one layer)."""
  return _take(pool["k"], table), _take(pool["v"], table)


def dense_view(pool: dict, table: jax.Array) -> dict:
  """A dense cache {"k", "v"} [B, K, (n + 1) * page_size, D] of the pages `table` [B, n] and
  then the scratch page (one layer; `text.init_kv_cache`'s layout): a decode round gathers its
  pages once and runs its steps on this view, idle rows writing past the real pages."""
  table = jnp.concatenate([table, jnp.full((table.shape[0], 1), SCRATCH_PAGE, table.dtype)], 1)
  return {"k": _take(pool["k"], table), "v": _take(pool["v"], table)}


def write_back(pool: dict, view: dict, start: jax.Array, count: jax.Array, pages: jax.Array, steps: int) -> dict:
  """One layer's pool with the entries start[b] .. start[b] + count[b] - 1 of `view` ([B, K, S,
  D], `dense_view`'s) written to the pages of `pages` [B, max_pages] (count <= steps)."""
  page_size = pool["k"].shape[2]
  e = start[:, None] + jnp.arange(steps)  # [B, steps]
  page = jnp.take_along_axis(pages, e // page_size, axis=1, mode="clip")
  flat = jnp.where(jnp.arange(steps)[None] < count[:, None], page * page_size + e % page_size, SCRATCH_PAGE * page_size)
  at = jnp.minimum(e, view["k"].shape[2] - 1)[:, None, :, None]

  def new(buf):  # [B, steps, K, D]
    return jnp.take_along_axis(buf, at, axis=2).transpose(0, 2, 1, 3)

  return write(pool, new(view["k"]), new(view["v"]), PagedIndex(flat, pages[:, :0]))
