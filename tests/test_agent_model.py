"""The agent loop with the tiny model end to end (real executor): a forced first turn calls the
tool, the model samples after the tool turn, and every sampled log-prob equals a teacher-forced
forward over the whole trajectory (images included); and launch.rollout's service
(`rl.rollouts.write_rollouts`) writes loadable trajectories, transcripts and the summary."""

import asyncio
import io
import json

import jax
import numpy as np
import pytest
from PIL import Image

from codevision_jax.data import synthetic
from codevision_jax.data.writers import write_sft_jsonl
from codevision_jax.sampling import agent as agent_lib
from codevision_jax.sampling import environment
from codevision_jax.sampling import trajectory as traj_lib
from codevision_jax.sampling.policy import ModelPolicy
from codevision_jax.execution.client import ExecutorClient
from executor.local import local_service
from codevision_jax.rl import rollouts
from configs import tiny_rollout

CALL = (
  "<think>Rotate it.</think>\n<tool_call>\n{\"name\": \"code_image_tool\", \"arguments\": "
  "{\"code\": \"result = image.rotate(90, expand=True)\", \"description\": \"rotate\", "
  "\"image_index\": 0}}\n</tool_call>"
)


class ForcedFirstTurn(ModelPolicy):
  """The model, except that each trajectory's first turn is `CALL` (teacher-forced)."""

  def __init__(self, tokenizer, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.forced = list(tokenizer(CALL, add_special_tokens=False)["input_ids"])
    self.pending = set()

  def start_many(self, items):  # `start` and the agent loop's batched starts both come here.
    super().start_many(items)
    self.pending.update(slot for slot, *_ in items)

  def decode(self, slots, budgets):
    out = {}
    for s in [s for s in slots if s in self.pending]:
      self.pending.discard(s)
      self.engine.append(s, self.forced)
      out[s] = (np.asarray(self.forced), np.zeros(len(self.forced), np.float32))
    rest = [(s, b) for s, b in zip(slots, budgets) if s not in out]
    if rest:
      out.update(super().decode(*zip(*rest)))
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  tok, model, settings = rollouts.model_parts(tiny_rollout.get_config(), str(tmp_path_factory.mktemp("tiny")))
  return model, tok, settings


@pytest.fixture(scope="module")
def service():
  with local_service(workers=2) as s:
    yield s


def test_tiny_model_end_to_end(parts, service):
  model, tok, settings = parts
  records = synthetic.generate(3, seed=0)
  config = agent_lib.AgentConfig(max_total_tokens=1500)
  policy = ForcedFirstTurn(
    tok,
    model,
    environment.stop_ids(tok),
    num_slots=2,
    capacity=1500,
    chunk=128,
    steps_per_call=16,
    temperature=1.0,
    seed=3,
  )

  async def go():
    async with ExecutorClient(service.url) as client:
      return await agent_lib.run_agent(policy, records, tok, client, settings, config)

  trajs, stats = asyncio.run(go())
  assert stats.decode_calls > 0
  for traj in trajs:
    assert traj.finish_reason in ("eos", "answer", "max_tokens", "max_turns")
    assert traj.tool_calls[0].status == "ok" and traj.tool_calls[0].result_image_index == 1
    assert len(traj.token_ids) == len(traj.policy_mask) == len(traj.logprobs) <= 1500
    # Teacher-forced forward over the whole trajectory, with its images re-preprocessed.
    images = [Image.open(io.BytesIO(im.png)).convert("RGB") for im in traj.images]
    pv, grid = settings.preprocess(images)
    assert grid.tolist() == [im.grid_thw for im in traj.images]
    ids = np.asarray(traj.token_ids)[None]
    logp = np.asarray(jax.nn.log_softmax(model(ids, pv, grid)[0], -1))
    sampled = np.flatnonzero(np.asarray(traj.policy_mask))
    sampled = sampled[sampled > traj.prompt_length + len(policy.forced)]  # After the tool turn.
    assert len(sampled) > 0
    got = np.asarray(traj.logprobs)[sampled]
    want = logp[sampled - 1, ids[0, sampled]]
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_launch_rollout_writes_trajectories_and_a_paged_cache_gives_the_same(service, tmp_path):
  data = tmp_path / "tasks.jsonl"
  write_sft_jsonl(synthetic.generate(3, seed=1), str(data))
  out = tmp_path / "out"
  cfg = tiny_rollout.get_config()
  cfg.data.source, cfg.data.paths, cfg.executor.urls = "files", str(data), service.url
  cfg.rollout.slots, cfg.rollout.group_size, cfg.agent.max_total_tokens = 2, 2, 1400
  summary = rollouts.write_rollouts(cfg, str(out), progress=False)
  assert summary["trajectories"] == 6
  back = traj_lib.load_jsonl(str(out / "trajectories.jsonl"))
  assert sorted(t.id for t in back) == list(range(6))
  assert all(t.finish_reason for t in back)
  summary_file = json.loads((out / "summary.json").read_text())
  assert summary_file["trajectories"] == 6 and summary_file["with_ground_truth"] == 6
  assert 0.0 <= summary_file["accuracy"] <= 1.0 and "score" in summary_file["reward"]
  assert summary_file["tool_calls"] == sum(len(t.tool_calls) for t in back)
  # The readable transcripts: a line per trajectory, in id order, with the text of every turn.
  lines = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]
  assert [x["id"] for x in lines] == list(range(6))
  for x, traj in zip(lines, sorted(back, key=lambda t: t.id)):
    assert x["turns"] and x["turns"][0]["role"] == "assistant" and x["ground_truth"]
    assert isinstance(x["correct"], bool) and len(x["tool_calls"]) == len(traj.tool_calls)
  assert summary_file["accuracy"] == sum(x["correct"] for x in lines) / 6

  # The same rollouts on a paged KV cache whose pool holds one trajectory of the limit (the two
  # slots outgrow it, so slots are preempted and prefilled again): the same trajectories.
  cfg.rollout.kv_page_size, cfg.rollout.kv_pool_tokens = 16, 1400
  assert summary["kv_preemptions"] == 0
  assert rollouts.write_rollouts(cfg, str(tmp_path / "paged"), progress=False)["kv_preemptions"] > 0
  paged = sorted(traj_lib.load_jsonl(str(tmp_path / "paged" / "trajectories.jsonl")), key=lambda t: t.id)
  for a, b in zip(sorted(back, key=lambda t: t.id), paged, strict=True):
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason, a.id
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_launch_rollout_stops_when_no_executor_answers(tmp_path):
  """The health check runs before the model is built and names every address it tried."""
  import socket
  from codevision_jax.execution.client import ExecutorUnavailable

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
  cfg = tiny_rollout.get_config()
  cfg.executor.urls = dead
  with pytest.raises(ExecutorUnavailable, match=f"(?s)no executor service answers.*{dead}.*executor.urls"):
    rollouts.write_rollouts(cfg, str(tmp_path / "out"), progress=False)
  assert not (tmp_path / "out" / "trajectories.jsonl").exists()


def test_health_check_leaves_out_dead_services(service):
  from codevision_jax.execution.client import healthy_services

  dead = "http://127.0.0.1:9"
  assert asyncio.run(healthy_services([dead, service.url + "/"], timeout_s=5)) == [service.url]
