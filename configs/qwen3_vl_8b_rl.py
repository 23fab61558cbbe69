"""python -m launch.rl --config=configs/qwen3_vl_8b_rl.py --workdir=DIR --config.init.sft_workdir=/runs/sft_8b --config.model.path=/ckpt/Qwen3-VL-8B-Thinking --config.data.paths=/data/codevision_rl.parquet --config.executor.urls=http://exec-0:8700,http://exec-1:8700

CodeVision's GRPO recipe for Qwen3-VL-8B (`model_type` "qwen3_vl", from the checkpoint's
config.json), every value stated here; the recipe is the one of Qwen2.5-VL-7B: 64 prompts per
round, 8 rollouts each, mini-batches of 32 prompts (two optimizer steps a round), lr 1e-6
constant, PPO clip 0.2 / 0.28 (clip-higher) with the dual clip 10 for negative advantages, token-
mean loss, the KL to the reference as a loss term (0.001, low_var_kl) and none in the reward, no
entropy bonus; rollouts of up to 12 assistant turns, 16k prompt + 16k response tokens, 10k tokens
per tool response, images capped at 8192 * 28 * 28 pixels for the model, code at most 2048
characters (the tool's limit). The reward is CodeVision's with the reference weights (format 0.1,
alpha 1, beta 0, gamma 0.5, emerge 0.2, -0.05 per failed call); add an LLM judge with
--config.judge.url.

The policy starts from an SFT run (`init.sft_workdir`, the Orbax checkpoints of launch.sft) or
from `model.path` alone (the HF checkpoint also gives the tokenizer and image processor). Data:
verl RL parquet (`prompt`, `images`, `reward_model.ground_truth`, `extra_info` with
`required_transforms` and `gt_bbox`). Executor services: run `python -m executor` on CPU hosts
beside the accelerators and list them in executor.urls (one local service is started when empty).
The microbatch geometry (`train.rows`, `train.buckets`, `train.patch_budget`) bounds memory:
size it for the accelerators.

Before renting accelerators, check that the recipe fits them (nothing is allocated; the table
lists each part's bytes per device in each phase, see README "Will it fit?"):
    python -m launch.rl --config=configs/qwen3_vl_8b_rl.py --config.model.preset=qwen3_vl_8b \
        --dry_run --dry_run_devices=8

Smoke test: one round of the recipe's own code path (rollouts through a local executor, scoring,
the update, the hand-off to a bfloat16 sampler) with the tiny model swapped in, on CPU in a
minute (tests/test_recipes.py runs it on 8 CPU devices). On a 2-core, 24 GB machine it needs few
short prompts (no system prompt or tool schema: with them a prompt of the tiny tokenizer is over
1,000 tokens), small images, a 1024-token limit and bucket, and a small patch budget:
    python -m launch.rl --config=configs/qwen3_vl_8b_rl.py --workdir=/tmp/smoke_qwen3_vl_8b_rl \
        --config.model.preset=qwen3_vl_tiny --config.model.vocab_size=512 \
        --config.data.source=synthetic --config.data.synthetic_short=True \
        --config.data.synthetic_size=8 --config.data.max_pixels=131072 \
        --config.rollout.prompts=2 --config.rollout.group_size=4 --config.rollout.slots=8 \
        --config.algo.mini_batch_prompts=2 --config.agent.system_prompt=False \
        --config.agent.max_total_tokens=1024 --config.agent.max_turns=3 \
        --config.train.buckets=1024, --config.train.patch_budget=4096 --config.train.rounds=1 \
        --config.executor.workers=2
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.path = ""              # Required: the Qwen3-VL HF checkpoint (tokenizer, processor, weights).
  c.model.preset = ""            # A named random model instead of a checkpoint: qwen3_vl_8b (the
                                 # published shapes; dry runs), qwen3_vl_tiny (smoke tests).
  c.model.vocab_size = 0
  c.model.tokenizer = ""
  c.model.param_dtype = "float32"  # Master weights.
  c.model.attention_backend = "auto"  # cudnn on NVIDIA GPUs, splash on TPUs, xla on CPUs.
  c.model.chat_format = ""       # Empty: the model family's (qwen2_vl; Qwen3-VL: qwen3_vl, or
                                 # qwen3_vl_nothink for Instruct); docs/chat_format.md.
  c.model.scan_layers = False  # True: decoder layers stacked, run by a scan (one compiled layer).

  c.init = ml_collections.ConfigDict()
  c.init.sft_workdir = ""        # The SFT run to start from (empty: model.path's weights).

  c.data = ml_collections.ConfigDict()
  c.data.source = "files"
  c.data.paths = ""              # Required: --config.data.paths=a.parquet,b.parquet
  c.data.tfds_name = ""          # source="tfds": the set launch.prepare_tfds wrote (--name),
  c.data.tfds_dir = ""           # ... under this directory (--data_dir), local or mounted,
  c.data.tfds_split = "train"    # ... this split of it (--split).
  c.data.skip_bad = False
  c.data.drop_oversized = True   # Trajectories that do not fit train.buckets / patch_budget /
                                 # max_images: True drops them, counted (batch/dropped_* in
                                 # metrics.jsonl, the end summary); False stops the round naming one.
  c.data.synthetic_size = 4096   # For --config.data.source=synthetic (a smoke test of the recipe).
  c.data.synthetic_seed = 0
  c.data.synthetic_short = False
  c.data.synthetic_kinds = ("word", "number", "arrow", "chart")  # Card contents to draw from.
  c.data.synthetic_transforms = ("none", "rotate_90", "rotate_180", "rotate_270", "flip_horizontal",
                                 "flip_vertical")
  c.data.synthetic_p_small = 0.5  # Share of cards placed small on a large canvas (a crop needed).
  c.data.seed = 0
  c.data.num_epochs = 1          # CodeVision trains 1-2 epochs.
  c.data.min_pixels = 0          # 0: the checkpoint's preprocessor setting.
  c.data.max_pixels = 8192 * 28 * 28

  c.rollout = ml_collections.ConfigDict()
  c.rollout.prompts = 64
  c.rollout.group_size = 8
  c.rollout.temperature = 1.0
  c.rollout.top_k = 0
  c.rollout.top_p = 1.0
  c.rollout.slots = 64
  c.rollout.steps_per_call = 64
  c.rollout.chunk = 512
  c.rollout.param_dtype = "bfloat16"

  c.agent = ml_collections.ConfigDict()
  c.agent.max_turns = 12
  c.agent.max_total_tokens = 32768  # 16k prompt + 16k response
  c.agent.max_tool_response_tokens = 10000
  c.agent.max_images = 16
  c.agent.tool_timeout_s = 10.0
  c.agent.max_stdout_chars = 512
  c.agent.system_prompt = True

  c.reward = ml_collections.ConfigDict()
  c.reward.format = 0.1
  c.reward.alpha = 1.0
  c.reward.beta = 0.0
  c.reward.gamma = 0.5
  c.reward.emerge = 0.2
  c.reward.tool_error_penalty = -0.05

  c.judge = ml_collections.ConfigDict()
  c.judge.url = ""               # e.g. http://judge:8000/v1 (a vLLM server); empty: rule only.
  c.judge.model = ""
  c.judge.max_concurrency = 32
  c.judge.timeout_s = 30.0
  c.judge.retries = 2

  c.executor = ml_collections.ConfigDict()
  c.executor.urls = ""
  c.executor.workers = 16
  c.executor.max_error_fraction = 0.5
  c.executor.call_deadline_s = 60.0

  c.algo = ml_collections.ConfigDict()
  c.algo.advantage = "grpo"
  c.algo.eps = 1e-6
  c.algo.clip_low = 0.2
  c.algo.clip_high = 0.28
  c.algo.clip_c = 10.0
  c.algo.kl_coef = 0.001
  c.algo.kl_kind = "low_var_kl"
  c.algo.ppo_epochs = 1
  c.algo.mini_batch_prompts = 32
  c.algo.ref_dtype = "bfloat16"

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-6
  c.optim.schedule = "constant"
  c.optim.warmup_ratio = 0.0
  c.optim.warmup_steps = 0
  c.optim.final_lr_ratio = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01    # verl's actor default.
  c.optim.max_grad_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.rounds = 0             # 0: data.num_epochs passes over the records.
  c.train.buckets = (4096, 8192, 16384, 32768)
  c.train.rows = 8               # A multiple of data x fsdp.
  c.train.patch_budget = 65536
  c.train.max_images = 128
  c.train.compute_dtype = "bfloat16"
  c.train.remat = "full"
  c.train.loss_chunk = 2048
  c.train.freeze_vision_tower = True
  c.train.freeze_merger = True
  c.train.log_every = 1
  c.train.checkpoint_every = 10
  c.train.keep_checkpoints = 3
  c.train.sigterm_grace_s = 20.0  # SIGTERM (preemption): finish the round in flight, save, exit 75
                                # (requeue); abandon it after this many s (0: wait). README 'Preemption'.
  c.train.async_checkpoints = True
  c.train.resume_step = 0         # 0: the newest intact checkpoint; N: resume from step N.
  c.train.allow_config_change = False  # Resume even when the config differs from the checkpoint's.
  c.train.save_rollouts = 8
  c.train.peak_tflops = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0               # Held-out evaluation every N rounds (needs eval.paths).
  c.eval.before_training = True
  c.eval.size = 512
  c.eval.seed = 10_000
  c.eval.paths = ""
  c.eval.samples = 1
  c.eval.temperature = 1.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.mesh.num_devices = 0
  c.mesh.rules = ()

  c.distributed = ml_collections.ConfigDict()
  c.distributed.num_processes = 1
  c.distributed.coordinator_address = ""
  c.distributed.process_id = -1
  return c
