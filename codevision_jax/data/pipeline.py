"""The SFT input pipeline: conversation records -> fixed-shape training batches, with Grain.

    sizes = sizing.record_sizes(source, tokenizer, settings)   # tokens, patches, images per record
    plan = BatchPlan(sizes, spec, seed=0, num_epochs=2)        # which records go in which batch
    it = make_iterator(plan, builder, workers=2)               # a checkpointable Grain iterator
    batch = next(it)                                           # this host's arrays

Shapes are static so that XLA compiles a bounded number of programs:

* Sequences are right-padded to the smallest of a few fixed `buckets` (e.g. 1024, 2048, 4096)
  that holds the longest one of the batch: at most `len(buckets)` programs.
* Images are handled with a per-batch *patch budget*: every microbatch carries exactly
  `patch_budget` patch rows, filled up by a padding image (`data.pack`). `patch_budget` must be a
  multiple of 4 (a merged 2x2 unit). Records whose images alone exceed the budget, and records
  longer than the largest bucket, do not fit (never truncated: cutting a conversation through an
  image or a tool call makes a broken example): the training loop refuses to start naming them
  (`refuse_oversized`), or with `data.drop_oversized` drops and counts them.

With `sort_window` > 0, each window of that many steps' worth of shuffled records is sorted by
length before batching, and the batches are shuffled again: far less padding, still a fresh
order every epoch.

A training step consumes `grad_accum` microbatches of `batch_size` rows (all hosts together).
Each microbatch is `num_groups` *groups* (by default one per host) of `batch_size / num_groups`
rows, each with its own patch budget; host h builds the h-th `num_groups / num_hosts` of them.
A fixed `num_groups` (`data.groups`) makes the batches independent of the number of processes:
a run on 2 hosts then trains on exactly the batches of the same run on one, and a checkpoint
resumes exactly under either. `BatchPlan` fills groups greedily in the epoch's shuffled order: a record goes to the
current group if there is a free row and its patches fit, else the next group starts (rows left
empty are padding with no loss). All groups of a step share one bucket. The plan is a pure
function of (record sizes, seed, epoch), computed identically on every host, so all hosts agree
on the number of steps; each host then builds only its own groups (per-host sharding):
`BatchBuilder` encodes each record of a group (`data.encode`) and packs the group into a
microbatch (`data.pack`, which documents the arrays); the batch stacks the microbatches on a
leading axis of `grad_accum`. The loss is the mean over all masked tokens of the step.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

from codevision_jax.data import encode, geometry as geometry_lib, pack
from codevision_jax.data.geometry import PACKING
from codevision_jax.processing import chat, image as image_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """An SFT step's layout: `grad_accum` microbatches of `batch_size` rows (all hosts together) in
  `group_count` groups, each group packed to `geometry` (the one `data.geometry.Geometry` RL uses
  too: `rows` = `batch_size / group_count`)."""

  buckets: tuple
  batch_size: int
  patch_budget: int
  grad_accum: int = 1
  max_images: int = 16
  num_hosts: int = 1
  sort_window: int = 0  # > 0: sort each window of this many steps' records by length.
  num_groups: int = 0  # Groups per microbatch, a multiple of num_hosts (0: num_hosts).
  packing: str = "none"  # "none" (a record per row), "first_fit" or "best_fit" (`plan_epoch`).

  def __post_init__(self):
    if self.group_count % self.num_hosts:
      raise ValueError(
        f"data.groups {self.num_groups} is not a multiple of the {self.num_hosts} "
        "processes; set it to one (or 0: one group per process)"
      )
    if self.batch_size % self.group_count:
      raise ValueError(
        f"batch_size {self.batch_size} is not divisible into {self.group_count} "
        "groups (data.groups, or one per process)"
      )
    if self.packing not in PACKING:
      raise ValueError(f"data.packing {self.packing!r} is not one of {PACKING}")
    _ = self.geometry  # Checks the buckets and the patch budget.

  @classmethod
  def from_config(cls, cfg) -> BatchSpec:
    """The layout an SFT config's `data` and `train` sections give, over this job's processes."""
    return cls(
      buckets=tuple(cfg.data.buckets),
      batch_size=cfg.data.batch_size,
      patch_budget=cfg.data.patch_budget,
      grad_accum=cfg.train.grad_accum,
      max_images=cfg.data.max_images,
      num_hosts=jax.process_count(),
      sort_window=cfg.data.sort_window,
      num_groups=cfg.data.groups,
      packing=cfg.data.packing,
    )

  @property
  def geometry(self) -> geometry_lib.Geometry:
    """The shapes of one group."""
    return geometry_lib.Geometry(tuple(self.buckets), self.rows, self.patch_budget, self.max_images)

  @property
  def group_count(self) -> int:
    """Groups per microbatch."""
    return self.num_groups or self.num_hosts

  @property
  def groups_per_host(self) -> int:
    return self.group_count // self.num_hosts

  @property
  def rows(self) -> int:
    """Rows of one group."""
    return self.batch_size // self.group_count

  @property
  def groups(self) -> int:
    """Groups per step."""
    return self.grad_accum * self.group_count

  def fits(self, sizes: np.ndarray) -> np.ndarray:
    """Which records (rows of `sizing.record_sizes`) a batch can hold."""
    return self.geometry.fits(sizes)

  def bucket(self, length: int) -> int:
    return self.geometry.bucket(length)


# ---- the plan -------------------------------------------------------------------------------------


def plan_epoch(sizes: np.ndarray, spec: BatchSpec, seed: int, epoch: int) -> list:
  """Batches of one epoch: a list of (bucket, groups), groups a list of `spec.groups` lists of
  record indices (group g belongs to microbatch g // group_count and, within it, to host
  (g % group_count) // groups_per_host).

  With `spec.packing`, a group is instead a list of rows, each a list of record indices whose
  tokens together fit the largest bucket (`geometry.fill_groups`, the packer RL uses too). The
  bucket is that of the batch's longest row."""
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(sizes))
  order = order[spec.fits(sizes)[order]]
  if spec.sort_window:  # Similar lengths share a batch (less padding); batches reshuffled below.
    w = spec.sort_window * spec.groups * spec.rows
    order = np.concatenate(
      [c[np.argsort(sizes[c, 0], kind="stable")] for c in np.split(order, range(w, len(order), w))] + [order[:0]]
    )
  groups = geometry_lib.fill_groups(order, sizes, spec.geometry, spec.packing)
  batches = []
  for start in range(0, len(groups), spec.groups):
    chunk = groups[start : start + spec.groups]
    longest = max(geometry_lib.row_length(sizes, row) for g in chunk for row in g)
    if spec.packing == "none":
      chunk = [[row[0] for row in g] for g in chunk]
    batches.append((spec.bucket(longest), chunk + [[] for _ in range(spec.groups - len(chunk))]))
  if spec.sort_window:
    batches = [batches[j] for j in rng.permutation(len(batches))]
  return batches


def drop_reasons(sizes: np.ndarray, spec: BatchSpec) -> str:
  ok = sizes[:, 0] >= 0
  reasons = [
    (int((~ok).sum()), "have an image that cannot be used (skipped)"),
    (int((ok & (sizes[:, 0] > spec.buckets[-1])).sum()), f"are longer than the largest bucket {spec.buckets[-1]}"),
    (
      int((ok & (sizes[:, 1] > spec.patch_budget)).sum()),
      f"have more image patches than data.patch_budget {spec.patch_budget}",
    ),
    (int((ok & (sizes[:, 2] > spec.max_images)).sum()), f"have more images than data.max_images {spec.max_images}"),
  ]
  return "; ".join(f"{n:,} {why}" for n, why in reasons if n)


def why_nothing_fits(sizes: np.ndarray, spec: BatchSpec) -> str:
  """What stops every record from fitting a batch, and the setting to change."""
  n = len(sizes)
  if not n:
    return "0 records: the data set is empty"
  ok = sizes[:, 0] >= 0
  if not ok.any():
    return f"none of the {n:,} records can be used: every one has an image that cannot be decoded"
  tokens, patches, images = sizes[ok, 0], sizes[ok, 1], sizes[ok, 2]
  if (tokens > spec.buckets[-1]).all():
    return (
      f"all {n:,} records are longer than the largest bucket {spec.buckets[-1]} (shortest "
      f"{tokens.min():,} tokens); raise data.buckets"
    )
  if (patches > spec.patch_budget).all():
    return (
      f"all {n:,} records have more image patches than data.patch_budget "
      f"{spec.patch_budget} (fewest {patches.min():,}); raise data.patch_budget or lower "
      "data.max_pixels"
    )
  if (images > spec.max_images).all():
    return (
      f"all {n:,} records have more images than data.max_images {spec.max_images} (fewest "
      f"{images.min():,}); raise data.max_images"
    )
  return f"no record fits the batch geometry: {drop_reasons(sizes, spec)}"


def oversized(sizes: np.ndarray, spec: BatchSpec) -> list[tuple[int, str]]:
  """[(record index, why it does not fit and what would fit it)] of the usable records (those
  sized; skipped bad ones aside) that no batch of `spec` can hold."""
  out = []
  for i in np.flatnonzero((sizes[:, 0] >= 0) & ~spec.fits(sizes)):
    n, p, k = (int(x) for x in sizes[i])
    why = []
    if n > spec.buckets[-1]:
      why.append(
        f"{n:,} tokens, more than the largest of data.buckets {tuple(spec.buckets)} (a bucket of {n:,} would hold it)"
      )
    if p > spec.patch_budget:
      why.append(
        f"{p:,} image patches, more than data.patch_budget {spec.patch_budget:,} "
        f"(data.patch_budget={-(-p // 4) * 4} would hold it, or a lower data.max_pixels)"
      )
    if k > spec.max_images:
      why.append(f"{k} images, more than data.max_images {spec.max_images}")
    out.append((int(i), "; ".join(why)))
  return out


def refuse_oversized(sizes: np.ndarray, spec: BatchSpec, origin) -> None:
  """Raises ValueError naming the records no batch can hold (`origin(i)`: record i's name, e.g.
  "file.jsonl:3"), their sizes and the setting that would fit them; silent when all fit."""
  found = oversized(sizes, spec)
  if not found:
    return
  if not spec.fits(sizes).any():
    raise ValueError(why_nothing_fits(sizes, spec))
  shown = "\n".join(f"  {origin(i)}: {why}" for i, why in found[:10])
  more = f"\n  ... and {len(found) - 10} more" if len(found) > 10 else ""
  raise ValueError(
    f"{len(found)} of {len(sizes)} records do not fit the batch geometry and would be dropped "
    f"(records are named file:index, the index counted from 0):\n{shown}{more}\nRaise the "
    "setting named (or shorten the records), or pass --config.data.drop_oversized=True to "
    "train without them: the run then counts them in its summary, in TensorBoard "
    "(data/dropped_records) and lists them in <workdir>/dropped_records.jsonl"
  )


class BatchPlan:
  """Step -> (bucket, groups) over `num_epochs` epochs, each with its own deterministic shuffle.

  A Grain random-access source: `len(plan)` steps; `plan[i]` is step i's layout.
  """

  def __init__(self, sizes: np.ndarray, spec: BatchSpec, *, seed: int, num_epochs: int = 1):
    self.sizes, self.spec, self.seed = np.asarray(sizes).reshape(-1, 3), spec, seed
    fits = spec.fits(self.sizes)
    self.num_dropped = int((~fits).sum())
    if not fits.any():
      raise ValueError(why_nothing_fits(self.sizes, spec))
    if self.num_dropped:
      log.warning("%d of %d records are dropped: %s", self.num_dropped, len(fits), drop_reasons(self.sizes, spec))
    self._epochs = [plan_epoch(self.sizes, spec, seed, e) for e in range(num_epochs)]
    self._steps = [(e, j) for e, batches in enumerate(self._epochs) for j in range(len(batches))]

  @property
  def steps_per_epoch(self) -> int:
    return len(self._epochs[0])

  def __len__(self):
    return len(self._steps)

  def __getitem__(self, step):
    epoch, j = self._steps[step]
    return self._epochs[epoch][j]


# ---- building a host's batch ---------------------------------------------------------------------


class BatchBuilder:
  """(bucket, groups) -> this host's batch (see `data.pack`). Picklable (runs in Grain workers)."""

  def __init__(
    self,
    source,
    tokenizer,
    settings: image_lib.ImageSettings,
    spec: BatchSpec,
    model_config,
    *,
    host: int = 0,
    pad_id: int | None = None,
  ):
    self.source, self.tokenizer, self.settings, self.spec = source, tokenizer, settings, spec
    self.host = host
    self.model_config = model_config
    self.pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    if self.pad_id is None:
      raise ValueError("the tokenizer has no pad token; pass pad_id")
    if tokenizer.convert_tokens_to_ids(chat.IMAGE_PAD) != model_config.image_token_id:
      raise ValueError(
        f"the tokenizer's {chat.IMAGE_PAD} id "
        f"{tokenizer.convert_tokens_to_ids(chat.IMAGE_PAD)} differs from the model "
        f"config's image_token_id {model_config.image_token_id}"
      )

  def __call__(self, item):
    bucket, groups = item
    spec = self.spec
    first = self.host * spec.groups_per_host
    microbatches = [
      concat_groups(
        [self.group(bucket, groups[m * spec.group_count + j], j) for j in range(first, first + spec.groups_per_host)]
      )
      for m in range(spec.grad_accum)
    ]
    return jax.tree.map(lambda *parts: np.stack(parts), *microbatches)

  def group(self, length: int, indices, position: int | None = None) -> dict:
    """Group `position` of a microbatch (default: this host's, one group per host): the records
    `indices` (with sequence packing: rows of records), encoded and packed to `length` tokens."""
    rows_of = None
    if self.spec.packing != "none":
      rows_of = [r for r, row in enumerate(indices) for _ in row]
      indices = [i for row in indices for i in row]
    examples = []
    for index in indices:
      conv = self.source[index]
      try:
        example = encode.encode(conv, self.tokenizer, self.settings)
      except (OSError, ValueError) as e:  # E.g. an image the sizing pass could not check in full.
        raise ValueError(f"{getattr(conv, 'origin', '') or f'record {index}'}: {type(e).__name__}: {e}") from e
      if len(example) > length:
        raise ValueError(
          f"record {index} ({getattr(conv, 'origin', '')}) has {len(example)} "
          f"tokens, more than its bucket {length}: the size pass and the batch "
          "disagree"
        )
      examples.append(example)
    spec = self.spec
    return pack.pack(
      examples,
      length=length,
      rows=spec.rows,
      patch_budget=spec.patch_budget,
      max_images=spec.max_images,
      model_config=self.model_config,
      pad_id=self.pad_id,
      host=self.host if position is None else position,
      max_image_patches=self.settings.max_frame_patches,
      rows_of=rows_of,
    )


def concat_groups(parts: list[dict]) -> dict:
  """Packed groups of one microbatch -> one host microbatch, laid out as the global batch is
  (rows, then patches, in group order; M-RoPE position ids [3, b, T] along their row axis)."""
  if len(parts) == 1:
    return parts[0]
  out = {
    k: np.concatenate([p[k] for p in parts], axis=1 if k == "position_ids" else 0) for k in parts[0] if k != "vision"
  }
  out["vision"] = jax.tree.map(lambda *xs: np.concatenate(xs), *[p["vision"] for p in parts])
  return out


def make_dataset(plan: BatchPlan, builder: BatchBuilder, *, workers: int = 0, buffer: int = 2):
  """The Grain dataset: plan -> batches, built in `workers` processes (0: in this process)."""
  import grain  # Deferred: only the training path needs it.

  # One reader thread a little ahead of the step (Grain's default of 16 threads and 500 elements
  # would build far ahead of training and compete with it for the host's cores).
  read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer)
  ds = grain.MapDataset.source(plan).map(builder).to_iter_dataset(read)
  if workers > 0:
    from absl import flags  # Grain's workers read absl flags; outside an absl app none are parsed.

    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
  return ds


def make_iterator(
  plan: BatchPlan, builder: BatchBuilder, *, workers: int = 0, buffer: int = 2, state: dict | None = None
):
  """A Grain `DatasetIterator` (with `get_state`/`set_state`), optionally restored to `state`."""
  it = iter(make_dataset(plan, builder, workers=workers, buffer=buffer))
  if state is not None:
    it.set_state(state)
  return it
