"""AdamW with linear warmup and cosine decay, global-norm clipping; which parameters train.

Gradient accumulation is not an optax wrapper here: the train step sums the gradients of
`grad_accum` microbatches and divides by the step's number of loss tokens, so the update is
exactly that of the token-mean loss over the whole step (`optax.MultiSteps` would average the
microbatch means instead).
"""

from __future__ import annotations

import optax
from flax import nnx

from codevision_jax.models import lora


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps` (or `warmup_ratio` of the run), then cosine to
  `lr * final_lr_ratio` at `total_steps` (or constant with `cfg.schedule == "constant"`)."""
  warmup = int(cfg.warmup_steps) if cfg.warmup_steps else int(round(cfg.warmup_ratio * total_steps))
  warmup = min(warmup, max(total_steps - 1, 0))
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1), alpha=cfg.final_lr_ratio)
  else:
    raise ValueError(f"optim.schedule {cfg.schedule!r} is not one of 'cosine', 'constant'")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm(cfg.max_grad_norm) then AdamW (decoupled weight decay on every matrix
  and vector, as torch's AdamW in LLaMA-Factory)."""
  parts = []
  if cfg.max_grad_norm:
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  parts.append(
    optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  )
  return optax.chain(*parts)


def trainable_filter(freeze_vision_tower: bool, freeze_merger: bool):
  """An NNX filter selecting the parameters that train.

  The vision tower is `model.visual` minus its merger (`model.visual.merger`); CodeVision
  freezes both, training the decoder and the LM head only.
  """

  def frozen(path, _):
    path = tuple(str(p) for p in path)
    if "visual" not in path:
      return False
    return freeze_merger if "merger" in path else freeze_vision_tower

  return nnx.All(nnx.Param, nnx.Not(frozen))


def trainable_of(cfg):
  """The parameters that train, a function of the whole config (SFT and RL): the LoRA adapters
  only when `model.lora.rank` > 0 (`models.lora`), else `trainable_filter` of the `train`
  section's freezing settings."""
  if lora.settings(cfg).enabled:
    return lora.adapters_filter()
  return trainable_filter(cfg.train.freeze_vision_tower, cfg.train.freeze_merger)
