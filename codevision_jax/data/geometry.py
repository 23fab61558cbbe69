"""One batch geometry and one packer, for SFT (`data.pipeline`) and RL (`rl.batch`).

    g = Geometry(buckets=(1024, 2048), rows=4, patch_budget=512, max_images=8)
    groups = fill_groups(order, sizes, g, packing="best_fit")   # [[row, ...], ...], row: [index, ...]
    g.bucket(max(row_length(sizes, row) for row in groups[0]))   # the sequence length to pad to

A microbatch (of one group: one host's share in SFT, the whole microbatch in RL) is `rows` rows
padded to one of `buckets`, with exactly `patch_budget` image patches and at most `max_images`
images (`data.pack` lays the arrays out). `sizes` is [n, 3] int: tokens, patches and images of
each example (`data.sizing.record_sizes`, `rl.batch.trajectory_sizes`).

`fill_groups` is the one greedy packer: examples in `order` go to the open group, each to a row
of its own (`packing="none"`) or, with sequence packing, into the first row with room for it
("first_fit") or the one it fills best ("best_fit"), else to a new row; a group closes when it
has `rows` rows and the example fits none, or when its patches or images would exceed the budget.
A packed row holds at most the largest bucket's tokens, and at most `segment_bound` of its tokens
examples (the segments per row cuDNN's packed attention is built for: `models.attention`); each
example in it is its own attention segment (`data.pack`), so the token-mean loss does not depend
on how examples are grouped.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from codevision_jax.models.attention import segment_bound

PACKING = ("none", "first_fit", "best_fit")


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Static microbatch shapes: `rows` rows of one of `buckets` tokens, `patch_budget` patches,
  at most `max_images` images; `max_image_patches` bounds one image frame (0: the budget)."""

  buckets: tuple
  rows: int
  patch_budget: int
  max_images: int
  max_image_patches: int = 0

  def __post_init__(self):
    if not self.buckets or list(self.buckets) != sorted(set(self.buckets)):
      raise ValueError(f"buckets must be increasing sequence lengths, got {self.buckets}")
    if self.patch_budget % 4:
      raise ValueError(f"patch_budget {self.patch_budget} must be a multiple of 4 (merged 2x2 units)")
    if self.rows < 1:
      raise ValueError(f"a microbatch needs at least one row, got rows={self.rows}")

  @property
  def length(self) -> int:
    """The most tokens a row holds (the largest bucket)."""
    return self.buckets[-1]

  def bucket(self, length: int) -> int:
    """The smallest bucket that holds `length` tokens."""
    for b in self.buckets:
      if length <= b:
        return b
    raise ValueError(f"a sequence of {length} tokens exceeds the largest bucket {self.buckets[-1]}")

  def fits(self, sizes: np.ndarray) -> np.ndarray:
    """Which examples (rows of `sizes`: tokens, patches, images; tokens < 0: unusable) one
    microbatch can hold."""
    sizes = np.asarray(sizes).reshape(-1, 3)
    return (
      (sizes[:, 0] >= 0)
      & (sizes[:, 0] <= self.length)
      & (sizes[:, 1] <= self.patch_budget)
      & (sizes[:, 2] <= self.max_images)
    )


def check_divisible(rows: int, patch_budget: int, shards: int, *, rows_key: str, budget_key: str) -> None:
  """Rows and patches are split over the batch mesh axes (`shards` = data x fsdp): both must
  divide evenly, the budget also into merged 2x2 units. Raises naming the config keys."""
  if rows % shards or patch_budget % (4 * shards // math.gcd(4, shards)):
    raise ValueError(
      f"{rows_key} {rows} and {budget_key} {patch_budget} must be multiples of "
      f"data x fsdp = {shards} (the budget also of 4); change them or "
      "--config.mesh.shape"
    )


def row_length(sizes: np.ndarray, row) -> int:
  """Tokens of a row (its examples' together)."""
  return int(sum(int(sizes[i, 0]) for i in row))


def fill_groups(order, sizes: np.ndarray, geometry: Geometry, packing: str = "none") -> list:
  """Examples `order` (indices into `sizes`, each fitting `geometry`) -> groups in order, each a
  list of rows, each a list of example indices (see the module docstring)."""
  if packing not in PACKING:
    raise ValueError(f"packing {packing!r} is not one of {PACKING}")
  groups, rows, room, used = [], None, [], [0, 0]  # The open group's rows, their room, patches/images.
  for i in order:
    n, p, k = (int(x) for x in sizes[i])
    fits = (
      []
      if packing == "none"
      else [r for r in range(len(room)) if room[r] >= n and len(rows[r]) < segment_bound(geometry.length - room[r] + n)]
    )
    if (
      rows is None
      or used[0] + p > geometry.patch_budget
      or used[1] + k > geometry.max_images
      or (not fits and len(rows) == geometry.rows)
    ):
      rows, room, used = [], [], [0, 0]
      groups.append(rows)
      fits = []
    if not fits:
      rows.append([])
      room.append(geometry.length)
      r = len(rows) - 1
    elif packing == "first_fit":
      r = fits[0]
    else:  # best_fit: the row left with the least room.
      r = min(fits, key=lambda j: (room[j], j))
    rows[r].append(int(i))
    room[r] -= n
    used[0] += p
    used[1] += k
  return groups
