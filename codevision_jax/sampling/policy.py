"""The policy interface of the agent loop, with the model behind it or a script.

A policy holds `num_slots` sequences. The agent loop calls

* `start(slot, trajectory_id, input_ids, pixel_values, image_grid_thw)`: a new trajectory's prompt
  goes into a free slot;
* `append(slot, input_ids, pixel_values, image_grid_thw)`: tokens the policy did not sample (a
  tool turn, with its image) are added to that slot (chunked prefill);
* `decode(slots, budgets)`: one batched call that samples for those slots; for each it returns
  (tokens, log-probs), ending at a stop token, at the slot's budget or at the policy's step count.

`ModelPolicy` runs the model (`engine.DecodeEngine`); `ScriptedPolicy` replays given assistant texts
through the tokenizer, so the loop can be tested against the real executor without a model.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import jax
import numpy as np
from flax import nnx

from codevision_jax.sampling.engine import DecodeEngine


class Policy(Protocol):
  num_slots: int

  def start(self, slot: int, trajectory_id: int, input_ids, pixel_values=None,
            image_grid_thw=None) -> None:
    ...

  def append(self, slot: int, input_ids, pixel_values=None, image_grid_thw=None) -> None:
    ...

  def decode(self, slots: Sequence[int], budgets: Sequence[int]
             ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    ...


class ModelPolicy:
  """The model, sampling at `temperature` (0: greedy) with optional top-k/top-p; image pads and
  vision markers are never sampled (only tool turns place them).

  Trajectory t samples with the key `fold_in(PRNGKey(seed), t)` folded with its token count, so
  its random stream does not depend on which slot it ran in or what ran beside it (a run is
  reproducible given the seed, the records and the number of slots).
  """

  def __init__(self, model: nnx.Module, stop_ids: Sequence[int], *, num_slots: int = 8,
               capacity: int = 4096, chunk: int = 128, steps_per_call: int = 32,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               params: nnx.State | None = None, rules=None, yield_ids: Sequence[int] = ()):
    self.num_slots, self.capacity = num_slots, capacity
    self.engine = DecodeEngine(model, chunk=chunk, params=params, rules=rules)
    self.engine.allocate(num_slots, capacity)
    self.stop_ids = list(stop_ids)
    self.yield_ids = list(yield_ids)  # Stops that end a decode round at once (a tool to call).
    self.steps_per_call = steps_per_call
    self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    self._temperature = temperature  # The policy's own; `reseed` may override it for a while.
    c = model.config
    self.banned_ids = [i for i in (c.image_token_id, c.video_token_id, c.vision_start_token_id,
                                   c.vision_end_token_id) if i is not None]
    self.seed = seed
    self._keys = np.array(jax.random.split(jax.random.PRNGKey(seed), num_slots))
    self._counts = np.zeros((num_slots,), np.int32)

  def reseed(self, seed: int, *, temperature: float | None = None) -> None:
    """Trajectories started from now on sample with the streams of `seed` (a round's seed, an
    evaluation's), at `temperature` when given, else at the policy's own."""
    self.seed = seed
    self.sampling["temperature"] = self._temperature if temperature is None else temperature

  def update_params(self, params: nnx.State) -> None:
    self.engine.update_params(params)

  def release(self) -> None:
    """Frees the KV cache (e.g. while a learner runs); the next `start` allocates it again."""
    self.engine.release()

  def start(self, slot, trajectory_id, input_ids, pixel_values=None, image_grid_thw=None):
    if self.engine.state is None:
      self.engine.allocate(self.num_slots, self.capacity)
    self.engine.reset(slot)
    self._keys[slot] = np.asarray(jax.random.fold_in(jax.random.PRNGKey(self.seed), trajectory_id))
    self._counts[slot] = 0
    self.engine.append(slot, input_ids, pixel_values, image_grid_thw)

  def append(self, slot, input_ids, pixel_values=None, image_grid_thw=None):
    self.engine.append(slot, input_ids, pixel_values, image_grid_thw)

  def decode(self, slots, budgets):
    active = np.zeros((self.num_slots,), bool)
    budget = np.zeros((self.num_slots,), np.int32)
    active[list(slots)] = True
    budget[list(slots)] = budgets
    tokens, logprobs, n = jax.device_get(self.engine.decode(
        active, budget, self._keys, self._counts, max_steps=self.steps_per_call,
        stop_ids=self.stop_ids, banned_ids=self.banned_ids, yield_ids=self.yield_ids,
        **self.sampling))
    self._counts += n.astype(np.int32)
    return {s: (tokens[s, :n[s]], logprobs[s, :n[s]]) for s in slots}


class ScriptedPolicy:
  """Emits scripted assistant turns: `scripts[trajectory_id]` is a list of texts, one per turn,
  each ending in a stop token (`</tool_call>`, `<|im_end|>`); past the script it emits
  `<|im_end|>`. Log-probs are -1. `appended[trajectory_id]` records every segment the loop
  added (prompt first), as token ids."""

  def __init__(self, tokenizer, scripts: dict, *, num_slots: int = 4, steps_per_call: int = 16):
    self.tokenizer = tokenizer
    self.scripts = {k: list(v) for k, v in scripts.items()}
    self.num_slots = num_slots
    self.steps_per_call = steps_per_call
    self.appended: dict[int, list[np.ndarray]] = {}
    self._slot_traj: dict[int, int] = {}
    self._turn: dict[int, int] = {}
    self._pending: dict[int, list[int]] = {}
    self.decode_calls = 0

  def _ids(self, text):
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def start(self, slot, trajectory_id, input_ids, pixel_values=None, image_grid_thw=None):
    self._slot_traj[slot] = trajectory_id
    self._turn[trajectory_id] = 0
    self._pending[slot] = []
    self.appended[trajectory_id] = [np.asarray(input_ids)]

  def append(self, slot, input_ids, pixel_values=None, image_grid_thw=None):
    self.appended[self._slot_traj[slot]].append(np.asarray(input_ids))

  def decode(self, slots, budgets):
    self.decode_calls += 1
    out = {}
    for slot, budget in zip(slots, budgets):
      traj = self._slot_traj[slot]
      if not self._pending[slot]:
        script = self.scripts.get(traj, [])
        turn = self._turn[traj]
        self._turn[traj] += 1
        self._pending[slot] = self._ids(script[turn] if turn < len(script) else "<|im_end|>")
      n = min(self.steps_per_call, int(budget), len(self._pending[slot]))
      tokens, self._pending[slot] = self._pending[slot][:n], self._pending[slot][n:]
      out[slot] = (np.asarray(tokens, np.int32), np.full((n,), -1.0, np.float32))
    return out
