"""A paged key/value cache: one pool of fixed-size pages shared by all sequences, and per sequence
a table of the pages that hold its entries (the block tables of vLLM and of JAX's Pallas
paged-attention kernels).

Layout: per layer {"k", "v"} [num_pages, page_size, kv_heads, head_dim] (a decoder with
`scan_layers` stacks them: [layers, num_pages, page_size, kv_heads, head_dim]). Entry e of a
sequence lives at page `table[e // page_size]`, offset `e % page_size`; the flat entry
`page * page_size + offset` indexes the pool seen as [num_pages * page_size, kv_heads, head_dim].
Page 0 is the scratch page: writes that must go nowhere (padding of a prefill chunk, rows not
decoding) go there, and table entries past a sequence's pages point there (masked keys).

Attention over pages (`gather`) copies a row's pages into a dense [B, S, K, D] view, S = pages
in the table x page_size: the plain gather that runs on every platform. The decoder takes a
`PagedIndex` as its `cache_index` to use this form (`text.TextAttention`).
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


def init_pool(num_layers: int, num_pages: int, page_size: int, kv_heads: int, head_dim: int, dtype,
              *, stacked: bool) -> list[dict] | dict:
  """An empty pool of zeros (see the module docstring for the layout)."""
  shape = (num_pages, page_size, kv_heads, head_dim)
  if stacked:
    shape = (num_layers,) + shape
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)]


def write(pool: dict, k: jax.Array, v: jax.Array, index: PagedIndex) -> dict:
  """One layer's pool with k, v [B, T, K, D] written at `index.write`."""
  n, p, kv_heads, d = pool["k"].shape
  flat = index.write.reshape(-1)

  def put(buf, new):
    new = new.astype(buf.dtype).reshape(-1, kv_heads, d)
    return buf.reshape(n * p, kv_heads, d).at[flat].set(new).reshape(n, p, kv_heads, d)

  return {"k": put(pool["k"], k), "v": put(pool["v"], v)}


def gather(pool: dict, table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Keys and values [B, n * page_size, K, D] of the pages `table` [B, n] (one layer)."""
  def take(buf):
    pages = buf[table]  # [B, n, P, K, D]
    b, n, p, kv_heads, d = pages.shape
    return pages.reshape(b, n * p, kv_heads, d)

  return take(pool["k"]), take(pool["v"])
