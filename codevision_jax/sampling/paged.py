"""The host side of the paged KV cache (`models.paged_kv`): which pages of the pool each slot
holds, and which are free.

    pool = PagePool(num_pages=513, page_size=64, num_slots=64, max_pages=513)
    pool.reserve(slot, tokens)      # True when the slot now holds pages for `tokens` entries
    pool.release(slot)              # a finished (or preempted) slot's pages go back to the pool
    pool.table                      # [slots, max_pages] int32, the device's page table

Page 0 is the scratch page (`paged_kv.SCRATCH_PAGE`) and is never handed out. A slot's pages are
listed in order in its row of `table`; the rest of the row points at the scratch page. Pages are
handed out from the top of a free stack, so a run's allocation is deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from codevision_jax.models.paged_kv import SCRATCH_PAGE


class PagePool:
  """Page accounting for `num_slots` slots over a pool of `num_pages` pages (the scratch page
  included) of `page_size` entries; a slot holds at most `max_pages` pages."""

  def __init__(self, num_pages: int, page_size: int, num_slots: int, max_pages: int):
    if num_pages < 2:
      raise ValueError(f"a paged cache needs at least 2 pages (one is scratch), got {num_pages}")
    self.page_size, self.num_pages, self.max_pages = page_size, num_pages, max_pages
    self._free = [p for p in range(num_pages - 1, -1, -1) if p != SCRATCH_PAGE]
    self.table = np.full((num_slots, max_pages), SCRATCH_PAGE, np.int32)
    self.held = np.zeros((num_slots,), np.int64)  # pages per slot
    self.version = 0  # bumped on every change of `table`

  def pages_for(self, tokens: int) -> int:
    return -(-int(tokens) // self.page_size)

  @property
  def free_pages(self) -> int:
    return len(self._free)

  @property
  def free_tokens(self) -> int:
    return self.free_pages * self.page_size

  def room(self, slot: int) -> int:
    """Entries the slot's pages hold."""
    return int(self.held[slot]) * self.page_size

  def can_reserve(self, slot: int, tokens: int) -> bool:
    need = self.pages_for(tokens)
    return need <= self.max_pages and need - self.held[slot] <= len(self._free)

  def reserve(self, slot: int, tokens: int) -> bool:
    """Gives `slot` pages for its first `tokens` entries; False (nothing changed) when the pool
    or the slot's table cannot hold them."""
    if not self.can_reserve(slot, tokens):
      return False
    need = self.pages_for(tokens)
    while self.held[slot] < need:
      self.table[slot, self.held[slot]] = self._free.pop()
      self.held[slot] += 1
      self.version += 1
    return True

  def release(self, slot: int) -> None:
    """Returns every page of `slot` to the pool."""
    n = int(self.held[slot])
    if n:
      self._free.extend(self.table[slot, :n][::-1].tolist())
      self.table[slot, :n] = SCRATCH_PAGE
      self.held[slot] = 0
      self.version += 1

  def write_entries(self, slot: int, start: int, n: int, width: int) -> np.ndarray:
    """Flat pool entries [width] for entries start .. start + n - 1 of `slot`, then the scratch
    page's first entry (padding)."""
    out = np.full((width,), SCRATCH_PAGE * self.page_size, np.int32)
    e = start + np.arange(n)
    out[:n] = self.table[slot, e // self.page_size] * self.page_size + e % self.page_size
    return out


def token_bytes(text_config, dtype) -> int:
  """Bytes one cached token takes: keys and values of every layer (56 KiB for Qwen2.5-VL-7B in
  bfloat16)."""
  tc = text_config
  return 2 * tc.num_hidden_layers * tc.num_key_value_heads * tc.resolved_head_dim * np.dtype(dtype).itemsize


@dataclasses.dataclass(frozen=True)
class CacheFit:
  """What a KV cache holds: `pool_tokens` in all, `token_bytes` a token; how many trajectories
  of `average_tokens` and of `max_tokens` fit at once; `slots` configured."""

  paged: bool
  pool_tokens: int
  token_bytes: int
  slots: int
  max_tokens: int
  average_tokens: int

  @property
  def gib(self) -> float:
    return self.pool_tokens * self.token_bytes / 2**30

  def fit(self, tokens: int) -> int:
    return self.pool_tokens // max(tokens, 1) if self.paged else self.slots

  def line(self) -> str:
    if not self.paged:
      return (
        f"KV cache: dense, {self.slots} slots x {self.max_tokens} tokens ({self.gib:.2f} GiB, "
        f"{self.token_bytes / 1024:.1f} KiB a token): {self.slots} trajectories in flight "
        "whatever their lengths"
      )
    return (
      f"KV cache: paged, a pool of {self.pool_tokens} tokens ({self.gib:.2f} GiB, "
      f"{self.token_bytes / 1024:.1f} KiB a token) for {self.slots} slots: "
      f"{min(self.fit(self.average_tokens), self.slots)} trajectories of {self.average_tokens} "
      f"tokens fit at once, {min(self.fit(self.max_tokens), self.slots)} of the maximum "
      f"{self.max_tokens}"
    )
