"""The SFT input pipeline: conversation records -> fixed-shape training batches, with Grain.

    plan = BatchPlan(sizes, spec, seed=0, num_epochs=2)      # which records go in which batch
    it = make_iterator(source, plan, builder, workers=2)     # a checkpointable Grain iterator
    batch = next(it)                                         # dict of numpy arrays (this host's)

Shapes are static so that XLA compiles a bounded number of programs:

* Sequences are right-padded to the smallest of a few fixed `buckets` (e.g. 1024, 2048, 4096)
  that holds the longest one of the batch: at most `len(buckets)` programs.
* Images are handled with a per-batch *patch budget*: the pixel values of every image of a host's
  microbatch travel as one array of exactly `patch_budget` patch rows. The space left over is filled
  by one *padding image* of zero pixels with grid (1, 2, n_pad / 2): it gets its own attention
  segment (its own frame and windows), so real patches never attend to it, and no token points at
  its features, so it changes neither the output nor the gradient. `patch_budget` must be a
  multiple of 4 (a merged 2x2 unit). Records whose images alone exceed the budget, and records
  longer than the largest bucket, are dropped and counted (never truncated: cutting a
  conversation through an image or a tool call makes a broken example).

With `sort_window` > 0, each window of that many steps' worth of shuffled records is sorted by
length before batching, and the batches are shuffled again: far less padding, still a fresh
order every epoch.

A training step consumes `grad_accum` microbatches of `batch_size` rows (all hosts together).
Each (microbatch, host) pair is a *group* of `batch_size / num_hosts` rows with its own patch
budget. `BatchPlan` fills groups greedily in the epoch's shuffled order: a record goes to the
current group if there is a free row and its patches fit, else the next group starts (rows left
empty are padding with no loss). All groups of a step share one bucket. The plan is a pure
function of (record sizes, seed, epoch), computed identically on every host, so all hosts agree
on the number of steps; each host then builds only its own groups (per-host sharding).

The batch a host gets (k = grad_accum, b = rows per host, T = bucket, P = patch budget):

    input_ids, targets, loss_mask, attention_mask [k, b, T]; position_ids [k, 3, b, T] (M-RoPE)
    image_index [k, b, T]: for an image token, the row of the merged vision features (numbered
      over all hosts' patches of the microbatch, host p's first row is p * P / 4); -1 elsewhere
    pixel_values [k, P, C*T*p*p]; vision_position_ids [k, P, 2]; window_index [k, P / 4];
      full_segments, window_segments [k, P] (made globally unique across hosts); Qwen3-VL also
      interp_indices, interp_weights [k, P, 4] (its resampled position-embedding taps)
    image_grid_thw [k, max_images, 3] (zero rows after the real images; the padding image is
      not listed)

`targets[t]` is `input_ids[t + 1]`; `loss_mask[t]` is 1 when that next token belongs to an
assistant turn. The loss is the mean over all masked tokens of the step.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os

import numpy as np
from PIL import Image

from codevision_jax.data import records as records_lib
from codevision_jax.models import prepare
from codevision_jax.processing import chat, image as image_lib

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Static batch geometry. `batch_size` counts rows of one microbatch over all hosts."""
  buckets: tuple
  batch_size: int
  patch_budget: int
  grad_accum: int = 1
  max_images: int = 16
  num_hosts: int = 1
  sort_window: int = 0  # > 0: sort each window of this many steps' records by length.

  def __post_init__(self):
    if self.batch_size % self.num_hosts:
      raise ValueError(f"batch_size {self.batch_size} is not divisible by the {self.num_hosts} hosts")
    if self.patch_budget % 4:
      raise ValueError(f"patch_budget {self.patch_budget} must be a multiple of 4 (merged 2x2 units)")
    if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets:
      raise ValueError(f"buckets must be increasing sequence lengths, got {self.buckets}")

  @property
  def rows(self) -> int:
    return self.batch_size // self.num_hosts

  @property
  def groups(self) -> int:
    return self.grad_accum * self.num_hosts

  def bucket(self, length: int) -> int:
    for b in self.buckets:
      if length <= b:
        return b
    raise ValueError(f"a sequence of {length} tokens exceeds the largest bucket {self.buckets[-1]}")


# ---- record sizes -------------------------------------------------------------------------------

def _image_size(source):
  """(width, height) from the header only."""
  if isinstance(source, Image.Image):
    return source.size
  if isinstance(source, (bytes, bytearray)):
    with Image.open(io.BytesIO(source)) as im:
      return im.size
  with Image.open(os.fspath(source)) as im:
    return im.size


def image_grids(conversation, settings: image_lib.ImageSettings) -> np.ndarray:
  """The `image_grid_thw` [N, 3] preprocessing will give, from image headers only."""
  grids = []
  for source in conversation.images:
    w, h = _image_size(source)
    rh, rw = image_lib.smart_resize(h, w, settings.factor, settings.min_pixels, settings.max_pixels)
    grids.append((1, rh // settings.patch_size, rw // settings.patch_size))
  return np.asarray(grids, np.int64).reshape(-1, 3)


def tokenize(conversation, tokenizer, grids, merge_size):
  return chat.tokenize_conversation(tokenizer, conversation.messages,
                                    image_lib.num_image_tokens(grids, merge_size),
                                    tools=conversation.tools)


def record_sizes(source, tokenizer, settings) -> np.ndarray:
  """[N, 3] int64: tokens, patches and images of every record (one pass, no pixel decoding)."""
  out = np.zeros((len(source), 3), np.int64)
  for i in range(len(source)):
    conv = source[i]
    grids = image_grids(conv, settings)
    out[i] = (len(tokenize(conv, tokenizer, grids, settings.merge_size).input_ids),
              int(grids.prod(-1).sum()), len(grids))
  return out


# ---- the plan -------------------------------------------------------------------------------------

def plan_epoch(sizes: np.ndarray, spec: BatchSpec, seed: int, epoch: int) -> list:
  """Batches of one epoch: a list of (bucket, groups), groups a list of `spec.groups` lists of
  record indices (group g = microbatch g // num_hosts, host g % num_hosts)."""
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(sizes))
  fits = ((sizes[:, 0] <= spec.buckets[-1]) & (sizes[:, 1] <= spec.patch_budget)
          & (sizes[:, 2] <= spec.max_images))
  order = order[fits[order]]
  if spec.sort_window:  # Similar lengths share a batch (less padding); batches reshuffled below.
    w = spec.sort_window * spec.groups * spec.rows
    order = np.concatenate([c[np.argsort(sizes[c, 0], kind="stable")]
                            for c in np.split(order, range(w, len(order), w))] + [order[:0]])
  batches, groups, used = [], [[]], [0, 0]  # used: patches, images of the current group

  def close_batch():
    longest = max(int(sizes[i, 0]) for g in groups for i in g)
    batches.append((spec.bucket(longest), [list(g) for g in groups]
                    + [[] for _ in range(spec.groups - len(groups))]))

  for i in order:
    p, n = int(sizes[i, 1]), int(sizes[i, 2])
    g = groups[-1]
    if len(g) == spec.rows or used[0] + p > spec.patch_budget or used[1] + n > spec.max_images:
      if len(groups) == spec.groups:
        close_batch()
        groups = []
      groups.append([])
      used = [0, 0]
    groups[-1].append(int(i))
    used[0] += p
    used[1] += n
  if groups[0]:
    close_batch()
  if spec.sort_window:
    batches = [batches[j] for j in rng.permutation(len(batches))]
  return batches


class BatchPlan:
  """Step -> (bucket, groups) over `num_epochs` epochs, each with its own deterministic shuffle.

  A Grain random-access source: `len(plan)` steps; `plan[i]` is step i's layout.
  """

  def __init__(self, sizes: np.ndarray, spec: BatchSpec, *, seed: int, num_epochs: int = 1):
    self.sizes, self.spec, self.seed = np.asarray(sizes), spec, seed
    dropped = int(len(sizes) - ((sizes[:, 0] <= spec.buckets[-1]) & (sizes[:, 1] <= spec.patch_budget)
                                & (sizes[:, 2] <= spec.max_images)).sum())
    if dropped:
      log.warning("%d of %d records are dropped: longer than %d tokens, more than %d patches or "
                  "more than %d images", dropped, len(sizes), spec.buckets[-1], spec.patch_budget,
                  spec.max_images)
    self.num_dropped = dropped
    self._epochs = [plan_epoch(self.sizes, spec, seed, e) for e in range(num_epochs)]
    self._steps = [(e, j) for e, batches in enumerate(self._epochs) for j in range(len(batches))]
    if not self._steps:
      raise ValueError(f"no record fits the batch geometry {spec}; raise buckets or patch_budget")

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
  """(bucket, groups) -> this host's batch of numpy arrays. Picklable (runs in Grain workers)."""

  def __init__(self, source, tokenizer, settings: image_lib.ImageSettings, spec: BatchSpec,
               model_config, *, host: int = 0, pad_id: int | None = None):
    self.source, self.tokenizer, self.settings, self.spec = source, tokenizer, settings, spec
    self.host = host
    self.image_token_id = model_config.image_token_id
    self.merge = model_config.vision.spatial_merge_size
    self.model_config = model_config
    self.pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    if self.pad_id is None:
      raise ValueError("the tokenizer has no pad token; pass pad_id")
    if tokenizer.convert_tokens_to_ids(chat.IMAGE_PAD) != self.image_token_id:
      raise ValueError(f"the tokenizer's {chat.IMAGE_PAD} id "
                       f"{tokenizer.convert_tokens_to_ids(chat.IMAGE_PAD)} differs from the model "
                       f"config's image_token_id {self.image_token_id}")

  def __call__(self, item):
    bucket, groups = item
    spec = self.spec
    mine = [groups[m * spec.num_hosts + self.host] for m in range(spec.grad_accum)]
    parts = [self.group(bucket, g) for g in mine]
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}

  def group(self, length: int, indices) -> dict:
    """One host's microbatch: `indices` records in rows, padded to `length` and the budget."""
    spec, s = self.spec, self.settings
    b, budget = spec.rows, spec.patch_budget
    ids = np.full((b, length), self.pad_id, np.int32)
    token_mask = np.zeros((b, length), np.int32)
    attention = np.zeros((b, length), np.int32)
    pixels, grids = [], []
    for row, index in enumerate(indices):
      conv = self.source[index]
      pv, thw = image_lib.preprocess_images([records_lib.load_image(x) for x in conv.images],
                                            **s.as_kwargs())
      tok = tokenize(conv, self.tokenizer, thw, s.merge_size)
      n = len(tok.input_ids)
      if n > length:
        raise ValueError(f"record {index} ({getattr(conv, 'origin', '')}) has {n} tokens, more than "
                         f"its bucket {length}: the size pass and the batch disagree")
      ids[row, :n], token_mask[row, :n], attention[row, :n] = tok.input_ids, tok.loss_mask, 1
      pixels.append(pv)
      grids.append(thw)
    patch_dim = 3 * s.temporal_patch_size * s.patch_size ** 2
    pixels = np.concatenate(pixels + [np.zeros((0, patch_dim), np.float32)]).astype(np.float32)
    grids = np.concatenate(grids + [np.zeros((0, 3), np.int64)]).astype(np.int64)
    n_real = len(pixels)
    if n_real > budget or len(grids) > spec.max_images:
      raise ValueError(f"records {list(indices)} need {n_real} patches / {len(grids)} images, over "
                       f"the budget {budget} / {spec.max_images}: the size pass and the batch disagree")
    position_ids = prepare.position_ids(self.model_config, ids, grids if len(grids) else None,
                                        attention)
    unit = self.merge ** 2
    is_image = ids == self.image_token_id
    image_index = np.where(is_image, np.cumsum(is_image.ravel()).reshape(b, length) - 1
                           + self.host * budget // unit, -1).astype(np.int32)
    out = dict(input_ids=ids, attention_mask=attention, position_ids=position_ids.astype(np.int32),
               image_index=image_index)
    out["targets"] = np.concatenate([ids[:, 1:], np.full((b, 1), self.pad_id, np.int32)], axis=1)
    out["loss_mask"] = np.concatenate([token_mask[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
    out.update(self._vision(pixels, grids, patch_dim))
    thw = np.zeros((spec.max_images, 3), np.int32)
    thw[:len(grids)] = grids
    out["image_grid_thw"] = thw
    return out

  def _vision(self, pixels, grids, patch_dim):
    """Pixel values and vision metadata padded to the budget with the padding image."""
    budget, unit = self.spec.patch_budget, self.merge ** 2
    n_pad = budget - len(pixels)
    all_grids = grids
    if n_pad:
      all_grids = np.concatenate([grids, [[1, self.merge, n_pad // self.merge]]]).astype(np.int64)
      pixels = np.concatenate([pixels, np.zeros((n_pad, patch_dim), np.float32)])
    if budget == 0:
      empty = np.zeros((0,), np.int32)
      return dict(pixel_values=pixels, vision_position_ids=np.zeros((0, 2), np.int32),
                  window_index=empty, full_segments=empty, window_segments=empty)
    meta = prepare.vision_metadata(self.model_config, all_grids)
    # Offsets make this host's units and segments distinct from every other host's.
    out = dict(pixel_values=pixels,
               vision_position_ids=np.asarray(meta.position_ids, np.int32),
               window_index=(np.asarray(meta.window_index) + self.host * budget // unit).astype(np.int32),
               full_segments=(np.asarray(meta.full_segments) + self.host * budget).astype(np.int32),
               window_segments=(np.asarray(meta.window_segments) + self.host * budget).astype(np.int32))
    if getattr(meta, "interp_indices", None) is not None:  # Qwen3-VL: resampled position table.
      out["interp_indices"] = np.asarray(meta.interp_indices, np.int32)
      out["interp_weights"] = np.asarray(meta.interp_weights, np.float32)
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
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=buffer))
  return ds


def make_iterator(plan: BatchPlan, builder: BatchBuilder, *, workers: int = 0, buffer: int = 2,
                  state: dict | None = None):
  """A Grain `DatasetIterator` (with `get_state`/`set_state`), optionally restored to `state`."""
  it = iter(make_dataset(plan, builder, workers=workers, buffer=buffer))
  if state is not None:
    it.set_state(state)
  return it
