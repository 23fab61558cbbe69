"""The sampler at the real recipes' settings, on 8 CPU devices: its KV cache is created sharded
(slots over the batch axes, KV heads over `tensor`) in the sampler's dtype and stays sharded through
appends and decode rounds, and a bfloat16 sampler copy of float32 weights decodes the tokens a
bfloat16 model does."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from codevision_jax import parallel
from codevision_jax.models import build_model, presets
from codevision_jax.sampling.policy import ModelPolicy
from codevision_jax.train import step as step_lib


def _sharded_model(mesh):
  return parallel.shard_model(build_model(presets.qwen2_5_vl_tiny(), seed=0), mesh)


def _cast_state(model, dtype):
  state = jax.tree.map(lambda x: x, nnx.state(model, nnx.Param))
  nnx.replace_by_pure_dict(
    state, jax.jit(lambda t: jax.tree.map(jnp.copy, step_lib.cast_floats(t, dtype)))(nnx.to_pure_dict(state))
  )
  return state


def _cache_arrays(policy):
  return jax.tree.leaves(policy.engine.state.cache)


def test_the_kv_cache_is_sharded_in_the_sampler_dtype_and_stays_so():
  assert len(jax.devices()) == 8
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = _sharded_model(mesh)
  params = _cast_state(model, jnp.bfloat16)
  policy = ModelPolicy(
    model, stop_ids=[7], num_slots=8, capacity=96, chunk=16, steps_per_call=8, temperature=1.0, params=params
  )
  tc = model.config.text
  length = 96 + 16 + 1
  want = P(("data", "fsdp"), "tensor", None, None)

  def check(stage):
    arrays = _cache_arrays(policy)
    assert len(arrays) == 2 * tc.num_hidden_layers
    for a in arrays:
      assert a.dtype == jnp.bfloat16, stage
      assert a.shape == (8, tc.num_key_value_heads, length, tc.resolved_head_dim), stage
      assert a.sharding.is_equivalent_to(NamedSharding(mesh, want), 4), (stage, a.sharding)
      # Each device holds 2 of the 8 slots and 1 of the 2 KV heads: an eighth of the cache.
      assert {s.data.shape for s in a.addressable_shards} == {(2, 1, length, tc.resolved_head_dim)}

  check("allocated")
  rng = np.random.default_rng(0)
  for slot in range(8):
    policy.start(slot, slot, rng.integers(10, 200, 12 + slot))
  check("after the prompts")
  out = policy.decode(list(range(8)), [8] * 8)
  assert all(len(tokens) >= 1 for tokens, _ in out.values())
  check("after a decode round")
  policy.append(3, rng.integers(10, 200, 20))
  check("after a tool turn's append")
  policy.release()
  assert policy.engine.state is None
  policy.start(0, 100, rng.integers(10, 200, 5))  # Allocated again on demand.
  check("reallocated")


def test_a_bfloat16_copy_decodes_like_a_bfloat16_model():
  """The engine built with a bfloat16 copy of float32 weights samples exactly what an engine of
  a model built in bfloat16 samples (greedy), and refuses float32 weights later."""
  mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  model = _sharded_model(mesh)
  copy = ModelPolicy(
    model,
    stop_ids=[7],
    num_slots=4,
    capacity=64,
    chunk=16,
    steps_per_call=16,
    temperature=0.0,
    params=_cast_state(model, jnp.bfloat16),
  )
  ref_model = _sharded_model(mesh)
  nnx.update(ref_model, _cast_state(ref_model, jnp.bfloat16))
  ref = ModelPolicy(ref_model, stop_ids=[7], num_slots=4, capacity=64, chunk=16, steps_per_call=16, temperature=0.0)
  rng = np.random.default_rng(1)
  prompts = [rng.integers(10, 200, n) for n in (5, 9, 14, 3)]
  for policy in (copy, ref):
    for slot, p in enumerate(prompts):
      policy.start(slot, slot, p)
  a, b = copy.decode(range(4), [16] * 4), ref.decode(range(4), [16] * 4)
  for slot in range(4):
    np.testing.assert_array_equal(a[slot][0], b[slot][0])
    np.testing.assert_allclose(a[slot][1], b[slot][1], atol=1e-5)
  try:
    copy.update_params(nnx.state(model, nnx.Param))
  except ValueError as e:
    assert "bfloat16" in str(e) and "float32" in str(e)
  else:
    raise AssertionError("float32 weights were taken by a bfloat16 sampler")


def test_an_rl_run_holds_what_each_phase_needs_and_nothing_else(tmp_path):
  """After the build the devices hold the learner's state, the frozen parameters and the sampler's
  bfloat16 copy, and nothing else (no KV cache before a rollout, no build-time weights pinned);
  dropping the sampler's copy for the learner frees exactly its bytes; the hand-off makes one new
  copy after freeing the old."""
  import gc
  from codevision_jax.rl import loop
  from configs import tiny_rl

  c = tiny_rl.get_config()
  c.init.sft_workdir, c.rollout.param_dtype = "", "bfloat16"

  def live():  # Device bytes held now, beyond what earlier tests left alive.
    gc.collect()
    return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted()) - base

  base = 0
  base = live()
  run = loop.build(c, str(tmp_path))

  def nbytes(tree):
    return sum(x.nbytes for x in jax.tree.leaves(tree))

  learner = nbytes(run.state) + nbytes(run.frozen)
  sampler = nbytes(run.policy.engine.params)
  sampler_trainable = sampler - nbytes(run.sampler_frozen)
  assert sampler_trainable == nbytes(run.state["params"]) // 2  # bfloat16 of float32
  assert run.policy.engine.state is None
  assert live() == learner + sampler
  loop.drop_sampler_params(run)
  assert live() == learner + sampler - sampler_trainable
  loop.hand_to_sampler(run, run.state["params"])
  assert live() == learner + sampler
  assert {x.dtype for x in jax.tree.leaves(run.policy.engine.params)} == {jnp.dtype("bfloat16")}
