"""Trajectories -> training microbatches, with the geometry and packing SFT uses (`data.pack`).

    examples = [trajectory_example(t, settings, a) for t, a in zip(trajectories, advantages)]
    mbs = microbatches(examples, geometry, model_config, pad_id)

A trajectory becomes an `encode.Example`: its tokens, the policy mask as the loss mask (only the
tokens the policy sampled carry loss; prompts, tool responses and images do not), its images
re-preprocessed from the PNGs it kept (their grids checked against the ones the model saw), and
per-token values: the sampler's log-probs and the trajectory's advantage. Examples are packed in
order into microbatches of `rows` rows that fit the patch and image budgets, each padded to the
smallest bucket that holds its longest example.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np
from PIL import Image

from codevision_jax.data import pack
from codevision_jax.data.encode import Example
from codevision_jax.processing import image as image_lib


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Microbatch shapes: `rows` sequences padded to one of `buckets`, `patch_budget` image patches
  and at most `max_images` images per microbatch."""
  buckets: tuple
  rows: int
  patch_budget: int
  max_images: int
  max_image_patches: int = 0  # patches of one image frame at most (0: the budget; `pack.pack`)

  def bucket(self, length: int) -> int:
    for b in self.buckets:
      if length <= b:
        return b
    raise ValueError(f"a sequence of {length} tokens exceeds the largest bucket {self.buckets[-1]}")

  def fits(self, example: Example) -> bool:
    return (len(example) <= self.buckets[-1] and len(example.pixel_values) <= self.patch_budget
            and len(example.image_grid_thw) <= self.max_images)


def trajectory_example(traj, settings: image_lib.ImageSettings, advantage: float) -> Example:
  """The training example of a trajectory (see the module docstring)."""
  images = [Image.open(io.BytesIO(im.png)).convert("RGB") for im in traj.images]
  pv, grids = image_lib.preprocess_images(images, **settings.as_kwargs())
  seen = [list(im.grid_thw) for im in traj.images]
  if np.asarray(grids).tolist() != seen:
    raise ValueError(f"trajectory {traj.id}: its images preprocess to grids {np.asarray(grids).tolist()}"
                     f" but the model saw {seen}; the image settings differ from the rollout's")
  n = len(traj.token_ids)
  return Example(
      input_ids=np.asarray(traj.token_ids, np.int32), loss_mask=np.asarray(traj.policy_mask, np.int32),
      pixel_values=np.asarray(pv, np.float32), image_grid_thw=np.asarray(grids, np.int64).reshape(-1, 3),
      token_values={"sample_logprobs": np.asarray(traj.logprobs, np.float32),
                    "advantages": np.full((n,), advantage, np.float32)})


def microbatches(examples: Sequence[Example], geometry: Geometry, model_config, pad_id: int) -> list:
  """Packed microbatches (host numpy pytrees, `data.pack`'s layout) of the examples, in order.
  Every example must fit the geometry (`Geometry.fits`)."""
  groups, current, patches, images = [], [], 0, 0
  for ex in examples:
    if not geometry.fits(ex):
      raise ValueError(f"an example of {len(ex)} tokens, {len(ex.pixel_values)} patches and "
                       f"{len(ex.image_grid_thw)} images does not fit the microbatch geometry {geometry}")
    p, k = len(ex.pixel_values), len(ex.image_grid_thw)
    if current and (len(current) == geometry.rows or patches + p > geometry.patch_budget
                    or images + k > geometry.max_images):
      groups.append(current)
      current, patches, images = [], 0, 0
    current.append(ex)
    patches, images = patches + p, images + k
  if current:
    groups.append(current)
  return [pack.pack(g, length=geometry.bucket(max(len(ex) for ex in g)), rows=geometry.rows,
                    patch_budget=geometry.patch_budget, max_images=geometry.max_images,
                    model_config=model_config, pad_id=pad_id,
                    max_image_patches=geometry.max_image_patches) for g in groups]
