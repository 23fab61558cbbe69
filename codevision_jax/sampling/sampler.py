"""The batch sampler: `generate` for a batch of prompts, a front end over the decode engine.

    sampler = Sampler(model)
    tokens, logprobs = sampler.generate(input_ids, pixel_values=pv, image_grid_thw=thw,
                                        attention_mask=mask, max_new_tokens=64, temperature=1.0)
    sampler.update_params(new_params)  # an nnx.State already on device: no host trip, no recompile

or, one call, `codevision_jax.generate(model, input_ids, ...)`.

Inputs are left-padded as transformers' processor gives them. Each call puts one prompt per slot
of a fresh `engine.DecodeEngine` state (one batched prefill, vision tower included) and decodes
all rows together on device. Shapes are bucketed so that the jitted functions compile once per
(batch, prompt-length bucket, cache length), shared by every model of the same architecture:
prompts are padded to a bucket (16, 32, ..., 256, then multiples of 256), the cache holds
`bucket + round_up(max_new_tokens, 16)` tokens per row. Prefill also compiles per number of image
patches; decode per mode (greedy, sampling, sampling with top-k/top-p filters). Temperature,
top-k, top-p, seed, stop ids, `max_new_tokens` within its bucket, and the parameters are traced
arguments: changing them does not recompile.

Positions: the prompt's 3-D M-RoPE ids come from `get_rope_index` on the host; generated tokens
continue all three rows from the prompt's largest position plus one, which is what transformers'
`generate` does (the running index plus the row's rope delta).

Outputs: `tokens` [B, max_new_tokens] int32 and `logprobs` [B, max_new_tokens] float32, the
log-probability of each sampled token under the policy (temperature 1, no filters; see
`sampling.logits`). A stop token is emitted and ends its row: later positions hold the pad id and
log-prob 0. Per-row PRNG: row b's key is `split(PRNGKey(seed), B)[b]`, folded with the step, so a
run is bit-reproducible given the seed. Everything stays on device: the outputs are device arrays.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codevision_jax.models import prepare
from codevision_jax.sampling.engine import DecodeEngine, prompt_bucket

_NEW_TOKEN_MULTIPLE = 16


def default_pad_token_id(config) -> int:
  """`pad_token_id` of the HF config (top level, then text), else 0."""
  for extra in (config.extra_top, config.extra_text):
    if extra.get("pad_token_id") is not None:
      return int(extra["pad_token_id"])
  return 0


class Sampler:
  """`generate` for one model architecture, with swappable parameters (see `DecodeEngine`)."""

  def __init__(self, model: nnx.Module, *, pad_token_id: int | None = None):
    self.engine = DecodeEngine(model, chunk=0)
    self.config = model.config
    self.pad_token_id = default_pad_token_id(self.config) if pad_token_id is None else int(pad_token_id)

  @property
  def params(self) -> nnx.State:
    return self.engine.params

  def update_params(self, params: nnx.State) -> None:
    """Uses `params` (e.g. the trainer's, on device) from the next call on. No copy is made.

    `params` must have the structure, shapes and dtypes of the model's `nnx.Param` state (as
    `nnx.state(model, nnx.Param)` gives); anything else would recompile, so it raises instead.
    """
    self.engine.update_params(params)

  def generate(
    self,
    input_ids,
    pixel_values=None,
    image_grid_thw=None,
    attention_mask=None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
  ) -> tuple[jax.Array, jax.Array]:
    """Samples up to `max_new_tokens` per row; see the module docstring for the outputs."""
    if (pixel_values is None) != (image_grid_thw is None):
      raise ValueError("pixel_values and image_grid_thw must be given together")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    b, p = input_ids.shape
    mask = np.ones((b, p), np.int32) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != (b, p):
      raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {input_ids.shape}")
    if not mask[:, -1].all():
      raise ValueError(
        "inputs must be left-padded (attention_mask[:, -1] all 1), as transformers' "
        "processor gives them with padding_side='left'"
      )
    prepare.check_image_tokens(self.config, input_ids, pixel_values, image_grid_thw)
    n = -(-max_new_tokens // _NEW_TOKEN_MULTIPLE) * _NEW_TOKEN_MULTIPLE
    engine = self.engine
    engine.allocate(b, prompt_bucket(p) + n)
    try:
      engine.prefill([row[m.astype(bool)] for row, m in zip(input_ids, mask)], pixel_values, image_grid_thw)
      tokens, logprobs, counts = engine.decode(
        np.ones((b,), bool),
        np.full((b,), max_new_tokens, np.int32),
        jax.random.split(jax.random.PRNGKey(seed), b),
        np.zeros((b,), np.int32),
        max_steps=n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_ids=stop_token_ids,
      )
    finally:
      engine.release()
    tokens = jnp.where(jnp.arange(n)[None, :] < counts[:, None], tokens, self.pad_token_id)
    return tokens[:, :max_new_tokens], logprobs[:, :max_new_tokens]


def generate(
  model: nnx.Module,
  input_ids,
  pixel_values=None,
  image_grid_thw=None,
  attention_mask=None,
  max_new_tokens: int = 64,
  temperature: float = 0.0,
  top_p: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  stop_token_ids: Sequence[int] = (),
  pad_token_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`tokens, logprobs` for left-padded processor outputs; see `Sampler` and the module docstring.

  Compilations are shared by every model of the same architecture, so repeated calls (with new
  parameters too) compile once per shape bucket.
  """
  return Sampler(model, pad_token_id=pad_token_id).generate(
    input_ids,
    pixel_values,
    image_grid_thw,
    attention_mask,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_p=top_p,
    top_k=top_k,
    seed=seed,
    stop_token_ids=stop_token_ids,
  )
