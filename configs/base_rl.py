"""CodeVision's GRPO recipe: the values configs/qwen2_5_vl_7b_rl.py and configs/qwen3_vl_8b_rl.py
share, each stated once here (with configs/common.py's sections). Not a config to run: the model
recipes name their model on top of `recipe()`, and configs/tiny_rl.py changes what a CPU run needs.

64 prompts per round, 8 rollouts each, mini-batches of 32 prompts (two optimizer steps a round),
lr 1e-6 constant, PPO clip 0.2 / 0.28 (clip-higher) with the dual clip 10 for negative
advantages, token-mean loss, the KL to the reference as a loss term (0.001, low_var_kl) and none
in the reward, no entropy bonus; rollouts of up to 12 assistant turns, 16k prompt + 16k response
tokens, 10k tokens per tool response, images capped at 8192 * 28 * 28 pixels for the model, code
at most 2048 characters (the tool's limit). The reward is CodeVision's with the reference weights
(format 0.1, alpha 1, beta 0, gamma 0.5, emerge 0.2, -0.05 per failed call); add an LLM judge
with --config.judge.url.

The policy starts from an SFT run (`init.sft_workdir`, the Orbax checkpoints of launch.sft) or
from `model.path` alone (the HF checkpoint also gives the tokenizer and image processor). Data:
verl RL parquet (`prompt`, `images`, `reward_model.ground_truth`, `extra_info` with
`required_transforms` and `gt_bbox`). Executor services: run `python -m executor` on CPU hosts
beside the accelerators and list them in executor.urls (one local service is started when empty).
The microbatch geometry (`train.rows`, `train.buckets`, `train.patch_budget`) bounds memory:
size it for the accelerators.
"""

import ml_collections

from configs import common


def recipe():
  """The recipe without its model (`model.path`, `model.preset`: the model recipe states them)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Initialisation of weights the checkpoint does not hold, and
  # every round's sampling.
  c.model = common.model()

  c.init = ml_collections.ConfigDict()
  c.init.sft_workdir = ""  # The SFT run to start from (empty: model.path's weights).

  c.data = common.data()
  c.data.drop_oversized = True  # Trajectories that do not fit train.buckets / patch_budget /
  # max_images: True drops them, counted (batch/dropped_* in
  # metrics.jsonl, the end summary); False stops the round naming one.
  c.data.synthetic_size = 4096  # Prompts of source="synthetic".
  c.data.num_epochs = 1  # Passes over the prompts when train.rounds is 0 (CodeVision: 1-2).
  c.data.max_pixels = 8192 * 28 * 28  # CodeVision's cap on the images the model sees.

  c.rollout = ml_collections.ConfigDict()
  c.rollout.prompts = 64  # Prompts per round (verl's train batch size).
  c.rollout.group_size = 8  # Trajectories per prompt (GRPO's group).
  c.rollout.temperature = 1.0  # Sampling temperature of the rollouts.
  c.rollout.top_k = 0  # 0: off.
  c.rollout.top_p = 1.0  # 1: off.
  c.rollout.slots = 64  # Trajectories decoded together.
  c.rollout.steps_per_call = 64  # Decode steps per device call between tool-call checks.
  c.rollout.chunk = 512  # Prefill chunk of prompts and tool turns.
  c.rollout.param_dtype = "bfloat16"  # The sampler's weights ("": model.param_dtype).
  c.rollout.kv_page_size = 0  # Paged KV cache: tokens a page, e.g. 64 (0: dense, agent.max_total_tokens
  # a slot: 64 x 32k = 112 GiB at 7B in bfloat16). See docs/sampling.md.
  c.rollout.kv_pool_tokens = 64 * 8192  # Paged: the pages of all slots together, 64 trajectories of
  # 8k (28 GiB at 7B); more trajectories in flight preempt the latest.

  c.agent = ml_collections.ConfigDict()  # codevision_jax.sampling.environment.AgentConfig
  c.agent.max_turns = 12  # Assistant turns per trajectory.
  c.agent.max_total_tokens = 32768  # 16k prompt + 16k response.
  c.agent.max_tool_response_tokens = 10000  # Tokens of one tool response.
  c.agent.max_images = 16  # Input and tool images of one trajectory.
  c.agent.tool_timeout_s = 10.0  # CPU seconds per tool call.
  c.agent.max_stdout_chars = 512  # Of the code's printed output shown to the model.
  c.agent.system_prompt = True  # CodeVision's system prompt and tool schema in every prompt.

  c.reward = ml_collections.ConfigDict()  # codevision_jax.rl.reward; docs/reward.md.
  c.reward.format = 0.1  # w_fmt
  c.reward.alpha = 1.0  # r_mandatory
  c.reward.beta = 0.0  # r_necessity
  c.reward.gamma = 0.5  # c_usage + r_spurious
  c.reward.emerge = 0.2  # w_emerge
  c.reward.tool_error_penalty = -0.05  # per failed tool call

  c.judge = ml_collections.ConfigDict()
  c.judge.url = ""  # OpenAI-compatible base URL (e.g. http://judge:8000/v1, a vLLM
  # server); empty: the rule alone decides accuracy.
  c.judge.model = ""  # The served model's name.
  c.judge.max_concurrency = 32  # Judge requests in flight.
  c.judge.timeout_s = 30.0  # Per request.
  c.judge.retries = 2  # Further attempts after a failed request.

  c.executor = ml_collections.ConfigDict()
  c.executor.urls = ""  # Comma-separated service URLs; empty: the launcher starts one.
  c.executor.workers = 16  # Workers of that local service.
  c.executor.max_error_fraction = 0.5  # Stop when more of a round's calls cannot reach a service.
  c.executor.call_deadline_s = 60.0  # Per tool call, all attempts and any wait for a service
  #   taken out of rotation to come back; then the call counts as failed.

  c.algo = ml_collections.ConfigDict()
  c.algo.advantage = "grpo"  # "grpo" or "dr_grpo" (codevision_jax.rl.advantages)
  c.algo.eps = 1e-6  # Added to the group's reward std.
  c.algo.clip_low = 0.2  # PPO clip: ratio >= 1 - clip_low,
  c.algo.clip_high = 0.28  # ... and <= 1 + clip_high (clip-higher).
  c.algo.clip_c = 10.0  # Dual clip for negative advantages.
  c.algo.kl_coef = 0.001  # KL to the reference as a loss term (0: none; its log-probs are skipped).
  c.algo.kl_kind = "low_var_kl"  # The KL estimator (k3).
  c.algo.ppo_epochs = 1  # Passes over a round's trajectories.
  c.algo.mini_batch_prompts = 32  # Prompts per optimizer step (their groups together).
  c.algo.ref_dtype = "bfloat16"  # The reference policy's weights.

  c.optim = common.optim(
    lr=1e-6, schedule="constant", warmup_ratio=0.0, weight_decay=0.01
  )  # weight_decay: verl's actor default.

  c.train = common.train()
  c.train.rounds = 0  # Rollout + update rounds (0: data.num_epochs passes over the data).
  c.train.buckets = (4096, 8192, 16384, 32768)  # Padded sequence lengths; the largest >= agent.max_total_tokens.
  c.train.rows = 8  # Trajectories per microbatch (a multiple of data x fsdp).
  c.train.patch_budget = 65536  # Image patches per microbatch (a multiple of 4).
  c.train.max_images = 128  # Images per microbatch.
  c.train.packing = "auto"  # Trajectories a row: "none" (one), "first_fit" / "best_fit" (several,
  # each its own attention segment), "auto" (the plan with fewer token
  # slots). The token-mean loss is the same either way (rl/batch.py).
  c.train.log_every = 1  # Rounds between metric lines.
  c.train.checkpoint_every = 10  # Rounds between checkpoints.
  c.train.save_rollouts = 8  # Trajectories of each round written to <workdir>/rollouts/.

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0  # Held-out evaluation every N rounds and at the end (0: never;
  # needs eval.paths).
  c.eval.before_training = True  # Also before the first round (the baseline).
  c.eval.size = 512  # Held-out prompts (synthetic: data.synthetic_* with eval.seed).
  c.eval.seed = 10_000
  c.eval.paths = ""  # Held-out record files.
  c.eval.samples = 1  # Trajectories per held-out prompt.
  c.eval.temperature = 1.0  # Their sampling temperature.

  c.mesh = common.mesh()
  c.distributed = common.distributed()
  return c


def smoke(c, preset, max_pixels):
  """The recipe `c`'s smoke test (`--config=configs/<recipe>.py:smoke`): one round of its own code
  path (rollouts through a local executor, scoring, the update, the hand-off to a bfloat16
  sampler) with the tiny model of `preset` swapped in, on CPU in a minute (tests/test_recipes.py
  runs it on 8 CPU devices). On a 2-core, 24 GB machine it needs few short prompts (no system
  prompt or tool schema: with them a prompt of the tiny tokenizer is over 1,000 tokens), small
  images (`max_pixels`), a 512-token limit and bucket (a random policy writes to the limit:
  decode time follows it), and a small patch budget."""
  common.tiny_model(c, preset, max_pixels)
  c.data.synthetic_size = 8
  c.rollout.prompts = 2
  c.rollout.group_size = 4
  c.rollout.slots = 8
  c.algo.mini_batch_prompts = 2
  c.agent.system_prompt = False
  c.agent.max_total_tokens = 512
  c.agent.max_turns = 3
  c.train.buckets = (512,)
  c.train.patch_budget = 4096
  c.train.rounds = 1
  c.executor.workers = 2
  return c
