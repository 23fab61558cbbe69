"""Trajectories -> training microbatches, with the geometry and packer SFT uses (`data.geometry`,
`data.pack`).

    sizes = trajectory_sizes(trajectories)                        # tokens, patches, images
    plans = plan_microbatches(members, sizes, geometry)           # from sizes alone: no decoding
    mb = build(plan, trajectories, advantages, settings, geometry, model_config, pad_id)

A trajectory becomes an `encode.Example`: its tokens, the policy mask as the loss mask (only the
tokens the policy sampled carry loss; prompts, tool responses and images do not), its images
re-preprocessed from the PNGs it kept (their grids checked against the ones the model saw), and
per-token values: the sampler's log-probs and the trajectory's advantage.

Several trajectories share a row (sequence packing; `plan_microbatches`' "auto" packing picks
the plan with the least padding, never more than one trajectory per row would have): each is
its own attention segment with its own M-RoPE positions and no loss crosses a boundary, so the
token-mean loss and its gradient are those of one trajectory per row (`packing="none"`), with
far less padding. A microbatch closes when its rows are full or its patch or image budget would
be exceeded, and is padded to the smallest bucket that holds its longest row and to the smallest
patch budget that holds its images. A microbatch is built (images decoded) only when `build` is
called, one at a time.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np
from PIL import Image

from codevision_jax.data import geometry as geometry_lib
from codevision_jax.data import pack
from codevision_jax.data.encode import Example
from codevision_jax.processing import image as image_lib

Geometry = geometry_lib.Geometry  # The one microbatch geometry (SFT's too).


@dataclasses.dataclass(frozen=True)
class MicrobatchPlan:
  """Which trajectories (indices into the round's) go in which row, the bucket to pad the rows
  to and the patch budget to pad the images to."""

  bucket: int
  rows: tuple  # tuple of tuples of trajectory indices
  patch_budget: int

  @property
  def members(self) -> list:
    return [i for row in self.rows for i in row]


def trajectory_sizes(trajectories: Sequence) -> np.ndarray:
  """[n, 3] int64: tokens, image patches and images of each trajectory (from the grids the model
  saw; nothing is decoded)."""
  return np.array(
    [[len(t.token_ids), sum(int(np.prod(im.grid_thw)) for im in t.images), len(t.images)] for t in trajectories],
    np.int64,
  ).reshape(-1, 3)


def plan_microbatches(
  indices: Sequence[int],
  sizes: np.ndarray,
  geometry: Geometry,
  packing: str = "auto",
  patch_budgets: Sequence[int] = (),
) -> list:
  """The microbatches (`MicrobatchPlan`s) of the trajectories `indices` (rows of `sizes`, each
  fitting `geometry`), packed in order by `data.geometry.fill_groups` with `packing` ("none",
  "first_fit", "best_fit": rows of up to the largest bucket). "auto": of the plan without packing
  and the best-fit plans with rows of each bucket that holds the longest trajectory, the one with
  the fewest token slots (rows x bucket), so never more padding than one trajectory per row.

  A microbatch holds up to `geometry.patch_budget` patches, padded to the smallest of
  `patch_budgets` (and `geometry.patch_budget`) that holds its own: patch buckets, as `buckets`
  are for tokens."""
  indices = [int(i) for i in indices]
  bad = [i for i in indices if not geometry.fits(sizes[i])[0]]
  if bad:
    raise ValueError(
      f"trajectory {bad[0]} ({sizes[bad[0]].tolist()} tokens, patches, images) does "
      f"not fit the microbatch geometry {geometry}"
    )
  budgets = sorted({b for b in patch_budgets if b < geometry.patch_budget} | {geometry.patch_budget})
  if packing != "auto":
    return _plans(indices, sizes, geometry, packing, budgets)
  longest = max((int(sizes[i, 0]) for i in indices), default=0)
  candidates = [_plans(indices, sizes, geometry, "none", budgets)] + [
    _plans(
      indices,
      sizes,
      dataclasses.replace(geometry, buckets=tuple(b for b in geometry.buckets if b <= room)),
      "best_fit",
      budgets,
    )
    for room in geometry.buckets
    if room >= longest
  ]
  return min(
    candidates,
    key=lambda plans: (token_slots(plans, sizes, geometry.rows)[1], len(plans), sum(p.patch_budget for p in plans)),
  )


def _plans(indices, sizes, geometry: Geometry, packing: str, budgets: list) -> list:
  out = []
  for rows in geometry_lib.fill_groups(indices, sizes, geometry, packing):
    patches = sum(int(sizes[i, 1]) for row in rows for i in row)
    out.append(
      MicrobatchPlan(
        geometry.bucket(max(geometry_lib.row_length(sizes, r) for r in rows)),
        tuple(tuple(r) for r in rows),
        next(b for b in budgets if b >= patches),
      )
    )
  return out


def patch_ladder(low: int, high: int) -> tuple:
  """Patch budgets from `low` doubling up to `high` (its last): a few compiled shapes between a
  microbatch of few images and one of images only."""
  out = [low]
  while out[-1] * 2 < high:
    out.append(out[-1] * 2)
  return tuple(out) + ((high,) if high > low else ())


def token_slots(plans: Sequence[MicrobatchPlan], sizes: np.ndarray, rows: int) -> tuple[int, int]:
  """(tokens of the trajectories, token slots of their microbatches: `rows` x bucket each)."""
  return sum(int(sizes[i, 0]) for p in plans for i in p.members), sum(rows * p.bucket for p in plans)


def trajectory_example(traj, settings: image_lib.ImageSettings, advantage: float, uint8: bool = False) -> Example:
  """The training example of a trajectory (see the module docstring); `uint8`: its pixel values
  are the resized uint8 ones (`preprocess_images(as_uint8=True)`), normalised on device."""
  images = [Image.open(io.BytesIO(im.png)).convert("RGB") for im in traj.images]
  pv, grids = image_lib.preprocess_images(images, **settings.as_kwargs(), as_uint8=uint8)
  seen = [list(im.grid_thw) for im in traj.images]
  if np.asarray(grids).tolist() != seen:
    raise ValueError(
      f"trajectory {traj.id}: its images preprocess to grids {np.asarray(grids).tolist()}"
      f" but the model saw {seen}; the image settings differ from the rollout's"
    )
  n = len(traj.token_ids)
  return Example(
    input_ids=np.asarray(traj.token_ids, np.int32),
    loss_mask=np.asarray(traj.policy_mask, np.int32),
    pixel_values=np.asarray(pv, np.uint8 if uint8 else np.float32),
    image_grid_thw=np.asarray(grids, np.int64).reshape(-1, 3),
    token_values={
      "sample_logprobs": np.asarray(traj.logprobs, np.float32),
      "advantages": np.full((n,), advantage, np.float32),
    },
  )


def build(
  plan: MicrobatchPlan,
  trajectories: Sequence,
  advantages,
  settings: image_lib.ImageSettings,
  geometry: Geometry,
  model_config,
  pad_id: int,
) -> dict:
  """The host microbatch (`data.pack`'s layout, `geometry.rows` rows of `plan.bucket` tokens) of
  a plan: its trajectories' examples (images decoded now), several to a row as planned; its pixel
  values uint8 (`rl.learner.to_device` normalises them there)."""
  examples = [trajectory_example(trajectories[i], settings, float(advantages[i]), uint8=True) for i in plan.members]
  return _pack_plan(examples, plan, geometry, model_config, pad_id)


def _pack_plan(examples: Sequence[Example], plan: MicrobatchPlan, geometry: Geometry, model_config, pad_id: int):
  """The microbatch of `plan` from its members' `examples` (in `plan.members` order): `data.pack`
  with the plan's bucket, rows and patch budget."""
  return pack.pack(
    examples,
    length=plan.bucket,
    rows=geometry.rows,
    patch_budget=plan.patch_budget,
    max_images=geometry.max_images,
    model_config=model_config,
    pad_id=pad_id,
    max_image_patches=geometry.max_image_patches,
    rows_of=[r for r, row in enumerate(plan.rows) for _ in row],
  )


def microbatches(
  examples: Sequence[Example], geometry: Geometry, model_config, pad_id: int, packing: str = "none"
) -> list:
  """Packed microbatches (host numpy pytrees, `data.pack`'s layout) of examples already encoded,
  in order (`packing` as `plan_microbatches`). Every example must fit the geometry."""
  sizes = np.array([[len(ex), len(ex.pixel_values), len(ex.image_grid_thw)] for ex in examples], np.int64).reshape(
    -1, 3
  )
  for ex, fits in zip(examples, geometry.fits(sizes)):
    if not fits:
      raise ValueError(
        f"an example of {len(ex)} tokens, {len(ex.pixel_values)} patches and "
        f"{len(ex.image_grid_thw)} images does not fit the microbatch geometry {geometry}"
      )
  # Planned without `patch_budgets`: every plan's patch budget is `geometry.patch_budget`.
  return [
    _pack_plan([examples[i] for i in p.members], p, geometry, model_config, pad_id)
    for p in plan_microbatches(range(len(examples)), sizes, geometry, packing)
  ]
