"""GRPO with two JAX processes on this machine (`jax.distributed.initialize`, coordinator on
127.0.0.1, gloo collectives, 4 simulated CPU devices each) against the same round in one process
with 8 devices: each process rolls out its half of the prompts on a sampler replica held by its
own devices, the learner trains on the (data 2, fsdp 2, tensor 2) mesh over all 8, and the round
equals the one-process round (the same trajectories, scores and parameters within float32
tolerance); after the update every replica holds the new weights. The processes are
`tests/multiprocess_rl.py`."""

import json

import numpy as np
import pytest

from executor.local import local_service
from multiprocess_util import spawn


def run(processes: int, workdir, sft_dir, executor_url, out) -> dict:
  """One RL round (tests/multiprocess_rl.py) on `processes` processes; process 0's output
  (parameters, trajectories, what each process saw)."""
  spawn("multiprocess_rl.py", processes, [workdir, sft_dir, executor_url, out])
  with open(str(out) + ".json") as f:
    info = json.load(f)
  return {"params": dict(np.load(out)), **info}


@pytest.fixture(scope="module")
def rounds(sft_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mprl")
  with local_service(workers=2) as service:
    one = run(1, tmp / "one", sft_dir, service.url, tmp / "one.npz")
    two = run(2, tmp / "two", sft_dir, service.url, tmp / "two.npz")
  return one, two


def test_each_process_samples_its_share_on_its_own_devices(rounds):
  _, two = rounds
  p0, p1 = two["processes"]
  assert (p0["share"], p1["share"]) == ([0, 2], [2, 4])  # Prompts [start, stop) of 4.
  for p in (p0, p1):
    assert p["sampler_devices"] == p["local_devices"] and len(p["local_devices"]) == 4
    assert p["sampler_synced"], p  # The replica holds the updated policy.
  assert not set(p0["local_devices"]) & set(p1["local_devices"])


def test_a_two_process_round_equals_the_one_process_round(rounds):
  one, two = rounds
  assert [t["id"] for t in one["trajectories"]] == [t["id"] for t in two["trajectories"]] == list(range(8))
  for a, b in zip(one["trajectories"], two["trajectories"]):
    assert a["token_ids"] == b["token_ids"], a["id"]
    assert a["reward"] == pytest.approx(b["reward"]), a["id"]
  # The trajectories used the tool: the executor served both processes' replicas.
  assert sum(t["tool_calls"] for t in two["trajectories"]) > 0
  assert one["processes"][0]["sampler_synced"]
  for key in ("rollout/reward/score", "rollout/accuracy", "actor/policy_tokens"):
    assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-6), key
  assert set(one["params"]) == set(two["params"])
  for k in one["params"]:
    np.testing.assert_allclose(two["params"][k], one["params"][k], rtol=1e-4, atol=2e-5, err_msg=k)
  # The round moved the policy (the comparison is not of two untouched copies).
  assert one["metrics"]["actor/grad_norm"] > 0


def test_replica_blocks_split_the_leading_mesh_axes():
  import jax
  from codevision_jax import parallel
  from codevision_jax.rl import replicas

  def shape(data, fsdp, tensor, processes):
    mesh = parallel.make_mesh(
      {"data": data, "fsdp": fsdp, "tensor": tensor}, devices=jax.devices()[: data * fsdp * tensor]
    )
    return replicas.local_shape(mesh, processes)

  assert shape(2, 2, 2, 2) == (1, 2, 2)
  assert shape(1, 4, 2, 2) == (1, 2, 2)
  assert shape(2, 2, 2, 4) == (1, 1, 2)
  assert shape(1, 8, 1, 8) == (1, 1, 1)
  assert shape(2, 2, 2, 1) == (2, 2, 2)
  assert shape(1, 1, 8, 4) == (1, 1, 2)  # Tensor-parallel replicas of 2 devices.
  with pytest.raises(ValueError, match="cannot be split into 4 per-process blocks"):
    shape(2, 3, 1, 4)
  with pytest.raises(ValueError, match="cannot be split into 2 per-process blocks"):
    shape(3, 2, 1, 2)
  assert [replicas.share(10, p, 3) for p in range(3)] == [(0, 3), (3, 7), (7, 10)]
  assert [replicas.share(4, p, 2) for p in range(2)] == [(0, 2), (2, 4)]


def test_gathering_sends_nothing_through_devices(tmp_path):
  """Each process's share of a round (trajectories with their PNGs) reaches the others host to
  host: with every way onto a device refused, 40 MB objects (two chunks each) gather intact."""
  import pickle

  out = str(tmp_path / "seen.pkl")
  spawn("multiprocess_gather.py", 2, [out], timeout=300)
  with open(out, "rb") as f:
    seen, ids = pickle.load(f)
  assert ids == [0, 1]
  for p, got in enumerate(seen):
    rng = np.random.default_rng(p)
    assert got["process"] == p and got["png"] == rng.bytes((40 << 20) + 123 * p)
    np.testing.assert_array_equal(got["tokens"], rng.integers(0, 100, 1000))
