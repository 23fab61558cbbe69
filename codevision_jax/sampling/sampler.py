"""The JAX sampler: prefill (vision tower and decoder) into a static key/value cache, then a decode
loop that runs on device.

    sampler = Sampler(model)
    tokens, logprobs = sampler.generate(input_ids, pixel_values=pv, image_grid_thw=thw,
                                        attention_mask=mask, max_new_tokens=64, temperature=1.0)
    sampler.update_params(new_params)  # an nnx.State already on device: no host trip, no recompile

or, one call, `codevision_jax.generate(model, input_ids, ...)`.

Inputs are left-padded as transformers' processor gives them. Shapes are bucketed so that the
jitted functions compile once per (batch, prompt-length bucket, cache length), shared by every
model of the same architecture: prompts get more left padding up to the bucket (16, 32, ..., 256,
then multiples of 256), the cache holds `bucket + round_up(max_new_tokens, 16)` slots. Prefill also
compiles per number of image patches; decode per mode (greedy, sampling, sampling with top-k/top-p
filters). Temperature, top-k, top-p, seed, stop ids (up to 8), the pad id, `max_new_tokens` within
its bucket, and the parameters are traced arguments: changing them does not recompile.

Positions: the prompt's 3-D M-RoPE ids come from `get_rope_index` on the host; each generated
token advances all three rows by one from the prompt's last column, which is what transformers'
`generate` does (`position_ids[..., -1:] + 1`), equal to the running index plus the row's rope
delta when the prompt ends in text.

Decode attention: the key at cache slot j is valid for a row iff it is a non-padding prompt
token, or a generated slot at or before the current one.

Outputs: `tokens` [B, max_new_tokens] int32 and `logprobs` [B, max_new_tokens] float32, the
log-probability of each sampled token under the policy (temperature 1, no filters; see
`sampling.logits`). A stop token is emitted and ends its row: later positions hold the pad id and
log-prob 0. Per-row PRNG: row b's key is `split(PRNGKey(seed), B)[b]`, folded with the step, so a
run is bit-reproducible given the seed.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codevision_jax.models import prepare

from codevision_jax.sampling.logits import choose_tokens

_NEW_TOKEN_MULTIPLE = 16
_STOP_SLOTS = 8


def prompt_bucket(length: int) -> int:
  """Powers of two from 16 to 256, then multiples of 256."""
  if length <= 256:
    return max(16, 1 << (max(length, 1) - 1).bit_length())
  return -(-length // 256) * 256


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def default_pad_token_id(config) -> int:
  """`pad_token_id` of the HF config (top level, then text), else 0."""
  for extra in (config.extra_top, config.extra_text):
    if extra.get("pad_token_id") is not None:
      return int(extra["pad_token_id"])
  return 0


TRACE_COUNTS = {"prefill": 0, "decode": 0}
"""How many times each jitted function was traced (a Python side effect at trace time)."""


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_length"))
def _prefill(graphdef, params, rest, input_ids, attention_mask, position_ids, pixel_values, vision_meta,
             *, cache_length: int):
  """Prompt [B, P] -> (last-position logits [B, V], cache of `cache_length` slots)."""
  TRACE_COUNTS["prefill"] += 1
  model = nnx.merge(graphdef, params, rest)
  lm = model.model.language_model
  b, p = input_ids.shape
  embeds, deepstack = model.embed(input_ids, pixel_values, vision_meta)
  tc = model.config.text
  shape = (b, tc.num_key_value_heads, cache_length, tc.resolved_head_dim)
  cache = [{"k": jnp.zeros(shape, embeds.dtype), "v": jnp.zeros(shape, embeds.dtype)}
           for _ in range(tc.num_hidden_layers)]
  slots = jnp.arange(cache_length)
  key_ok = jnp.pad(attention_mask.astype(bool), ((0, 0), (0, cache_length - p)))
  mask = key_ok[:, None, None, :] & (slots[None, None, None, :] <= jnp.arange(p)[None, None, :, None])
  hidden, cache = lm(embeds, position_ids, mask, kv_cache=cache, cache_index=0, deepstack=deepstack)
  return model.logits(hidden[:, -1]), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "buffer_length", "greedy", "filtered"),
                   donate_argnames=("cache",))
def _decode(graphdef, params, rest, cache, logits, prompt_mask, next_position, max_new_tokens, keys,
            temperature, top_k, top_p, stop_ids, pad_id, *, buffer_length: int, greedy: bool,
            filtered: bool):
  """The decode loop, on device: a while_loop that stops at `max_new_tokens` (<= `buffer_length`)
  or when every row has stopped.

  Returns tokens and log-probs [B, buffer_length], the number of steps run and the cache (donated
  in and returned: updated in place, valid for slots < prompt length + steps - 1).
  """
  TRACE_COUNTS["decode"] += 1
  model = nnx.merge(graphdef, params, rest)
  lm = model.model.language_model
  b, n = prompt_mask.shape[0], buffer_length
  prompt_len = prompt_mask.shape[1]
  cache_length = cache[0]["k"].shape[2]
  slots = jnp.arange(cache_length)
  prompt_ok = jnp.pad(prompt_mask.astype(bool), ((0, 0), (0, cache_length - prompt_len)))

  def choose(step, logits, done):
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
    tok, lp = choose_tokens(logits, step_keys, temperature, top_k, top_p, greedy=greedy,
                            filtered=filtered)
    tok = jnp.where(done, pad_id, tok)
    lp = jnp.where(done, 0.0, lp)
    done = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    return tok, lp, done

  tok0, lp0, done = choose(0, logits, jnp.zeros((b,), bool))
  tokens = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok0)
  logprobs = jnp.zeros((b, n), jnp.float32).at[:, 0].set(lp0)

  def cond(state):
    step, _, _, _, done, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, cache, tokens, logprobs, done, last = state
    slot = prompt_len + step - 1  # where the last sampled token goes
    position = jnp.broadcast_to((next_position + step - 1)[:, :, None], (3, b, 1))
    mask = prompt_ok | ((slots >= prompt_len) & (slots <= slot))[None, :]
    embeds = lm.embed_tokens(last[:, None])
    hidden, cache = lm(embeds, position, mask[:, None, None, :], kv_cache=cache, cache_index=slot)
    tok, lp, done = choose(step, model.logits(hidden[:, -1]), done)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, step, axis=1)
    logprobs = jax.lax.dynamic_update_index_in_dim(logprobs, lp, step, axis=1)
    return step + 1, cache, tokens, logprobs, done, tok

  state = (jnp.asarray(1, jnp.int32), cache, tokens, logprobs, done, tok0)
  steps, cache, tokens, logprobs, _, _ = jax.lax.while_loop(cond, body, state)
  return tokens, logprobs, steps, cache


class Sampler:
  """Prefill and decode for one model architecture, with swappable parameters.

  The model is split into its graph definition (a static argument of the jitted functions: every
  sampler of the same architecture shares their compilations) and its parameters (an `nnx.State`
  argument), so `update_params` replaces the weights without a recompilation.
  """

  def __init__(self, model: nnx.Module, *, pad_token_id: int | None = None):
    self._graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)
    self.config = model.config
    self.pad_token_id = default_pad_token_id(self.config) if pad_token_id is None else int(pad_token_id)

  @property
  def params(self) -> nnx.State:
    return self._params

  def update_params(self, params: nnx.State) -> None:
    """Uses `params` (e.g. the trainer's, on device) from the next call on. No copy is made.

    `params` must have the structure, shapes and dtypes of the model's `nnx.Param` state (as
    `nnx.state(model, nnx.Param)` gives); anything else would recompile, so it raises instead.
    """
    old = jax.tree_util.tree_flatten_with_path(self._params)[0]
    new, new_def = jax.tree_util.tree_flatten_with_path(params)
    if new_def != jax.tree.structure(self._params):
      missing = {jax.tree_util.keystr(p) for p, _ in old} ^ {jax.tree_util.keystr(p) for p, _ in new}
      raise ValueError("update_params: the new state's structure differs from the model's "
                       f"parameters (paths in one but not the other: {sorted(missing)[:5]}); pass "
                       "nnx.state(model, nnx.Param) of the same architecture")
    for (path, a), (_, b) in zip(old, new):
      if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"update_params: {jax.tree_util.keystr(path)} is {b.dtype}{list(b.shape)}, "
                         f"the sampler was built for {a.dtype}{list(a.shape)}")
    self._params = params

  # ---- host API --------------------------------------------------------------------------------

  def generate(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None, *,
               max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
               seed: int = 0, stop_token_ids: Sequence[int] = ()) -> tuple[jax.Array, jax.Array]:
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
      raise ValueError("inputs must be left-padded (attention_mask[:, -1] all 1), as transformers' "
                       "processor gives them with padding_side='left'")
    prepare.check_image_tokens(self.config, input_ids, pixel_values, image_grid_thw)
    positions, meta = prepare.prepare(self.config, input_ids, image_grid_thw, mask)
    stops = list(stop_token_ids)
    slots = max(_STOP_SLOTS, _round_up(len(stops), _STOP_SLOTS))
    stop_ids = np.full((slots,), -1, np.int32)
    stop_ids[:len(stops)] = stops

    # Left-pad the prompt to its bucket: padding gets position 0 and is masked as a key.
    bucket = prompt_bucket(p)
    extra = bucket - p
    ids = np.pad(input_ids, ((0, 0), (extra, 0)), constant_values=self.pad_token_id).astype(np.int32)
    mask = np.pad(mask, ((0, 0), (extra, 0))).astype(np.int32)
    positions = np.pad(positions, ((0, 0), (0, 0), (extra, 0))).astype(np.int32)
    next_position = positions[:, :, -1] + 1
    n = _round_up(max_new_tokens, _NEW_TOKEN_MULTIPLE)

    logits, cache = _prefill(
        self._graphdef, self._params, self._rest, ids, mask, positions,
        None if pixel_values is None else jnp.asarray(pixel_values), meta, cache_length=bucket + n)
    keys = jax.random.split(jax.random.PRNGKey(seed), b)
    tokens, logprobs, _, _ = _decode(
        self._graphdef, self._params, self._rest, cache, logits, mask, next_position,
        np.int32(max_new_tokens), keys, np.float32(temperature), np.int32(top_k),
        np.float32(top_p), stop_ids, np.int32(self.pad_token_id), buffer_length=n,
        greedy=temperature == 0,
        filtered=temperature > 0 and (top_k > 0 or top_p < 1))
    return tokens[:, :max_new_tokens], logprobs[:, :max_new_tokens]


def generate(model: nnx.Module, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             seed: int = 0, stop_token_ids: Sequence[int] = (), pad_token_id: int | None = None
             ) -> tuple[jax.Array, jax.Array]:
  """`tokens, logprobs` for left-padded processor outputs; see `Sampler` and the module docstring.

  Compilations are shared by every model of the same architecture, so repeated calls (with new
  parameters too) compile once per shape bucket.
  """
  return Sampler(model, pad_token_id=pad_token_id).generate(
      input_ids, pixel_values, image_grid_thw, attention_mask, max_new_tokens=max_new_tokens,
      temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop_token_ids=stop_token_ids)
