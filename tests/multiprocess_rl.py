"""One process of a multi-process GRPO round on CPU, for tests/test_multiprocess_rl.py.

    python tests/multiprocess_rl.py PROCESS_ID NUM_PROCESSES PORT WORKDIR SFT_DIR EXECUTOR_URL OUT

Each of NUM_PROCESSES processes simulates 8 / NUM_PROCESSES CPU devices; with more than one they
join through `jax.distributed.initialize` (coordinator on 127.0.0.1:PORT, gloo collectives). The
learner trains on one (data 2, fsdp 2, tensor 2) mesh over all 8 devices; each process samples
its share of the round's prompts on its own sampler replica. After one round process 0 writes
the trained parameters (gathered from every process) to OUT.npz and, to OUT.json, the round's
trajectories (ids, tokens, scores) and what each process saw: its share of the prompts, the
devices of its sampler's weights and whether they equal the updated policy.
"""

import json
import os
import sys

import multiprocess_util

PROCESS_ID, NUM_PROCESSES, (WORKDIR, SFT_DIR, EXECUTOR_URL, OUT) = multiprocess_util.join(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from codevision_jax.rl import loop, replicas  # noqa: E402
from configs import tiny_rl  # noqa: E402

c = tiny_rl.get_config()
c.init.sft_workdir = SFT_DIR
c.train.rounds, c.eval.every, c.train.save_rollouts = 1, 0, 8
c.rollout.prompts, c.rollout.group_size, c.algo.mini_batch_prompts = 4, 2, 2
c.data.synthetic_size = 16  # The round's 4 prompts among 16 tasks (the recipe's 512 take seconds).
c.mesh.num_devices = 0
c.mesh.shape.data, c.mesh.shape.fsdp, c.mesh.shape.tensor = 2, 2, 2

result = loop.train(c, WORKDIR, executor_urls=[EXECUTOR_URL])
run = result.run
params = multihost_utils.process_allgather(result.state["params"], tiled=True)

# The sampler's weights: on this process's devices only, equal to the updated policy.
sampler = nnx.to_pure_dict(run.policy.engine.params)
sampler_leaves = jax.tree_util.tree_flatten_with_path(sampler)[0]
devices = sorted({d.id for _, leaf in sampler_leaves for d in leaf.devices()})
flat = {
  "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
  for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
}
sampler_flat = {
  "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf for path, leaf in sampler_leaves
}
synced = all(np.array_equal(np.asarray(sampler_flat[k]), v) for k, v in flat.items())
seen = replicas.allgather_objects(
  {
    "process": jax.process_index(),
    "share": replicas.share(c.rollout.prompts),
    "sampler_devices": devices,
    "local_devices": sorted(d.id for d in jax.local_devices()),
    "sampler_synced": bool(synced),
  }
)

if jax.process_index() == 0:
  np.savez(OUT, **flat)
  ro = json.load(open(os.path.join(WORKDIR, "metrics.jsonl")))
  with open(os.path.join(WORKDIR, "rollouts", "round_00001", "trajectories.jsonl")) as f:
    trajs = [json.loads(line) for line in f]
  with open(OUT + ".json", "w") as f:
    json.dump(
      {
        "processes": seen,
        "metrics": ro,
        "trajectories": [
          {
            "id": t["id"],
            "token_ids": t["token_ids"],
            "reward": t["metadata"]["reward"]["score"],
            "tool_calls": len(t.get("tool_calls", [])),
          }
          for t in trajs
        ],
      },
      f,
    )
