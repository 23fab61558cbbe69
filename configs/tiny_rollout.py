"""python -m launch.rollout --config=configs/tiny_rollout.py --out=/tmp/rollout

Rollouts of the agent loop on the embedded default: the tiny Qwen2.5-VL (random init, tiny
tokenizer built into the output directory) answering 8 synthetic orientation-and-crop tasks
through the code tool, with an executor service started for the run, on CPU in under a minute.
The same sections as the SFT recipes describe the model and data (`model`, `data`, `mesh`), and
as the RL recipes the sampler, agent, executor and judge (`rollout`, `agent`, `executor`, `judge`;
the reward's weights are its defaults, an RL recipe's `reward` section where there is one); a
real run names a checkpoint, a data file and running executor services, e.g.

    python -m launch.rollout --config=configs/tiny_rollout.py --out=/runs/rollout \\
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.max_pixels=0 \\
        --config.data.source=files --config.data.paths=/data/eval.parquet \\
        --config.agent.max_total_tokens=16384 --config.executor.urls=http://exec-0:8700
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0  # Initialisation of a random `model.preset`; the sampling streams.

  c.model = ml_collections.ConfigDict()
  c.model.path = ""  # An HF checkpoint directory; empty: a random `preset`.
  c.model.preset = "qwen2_5_vl_tiny"
  c.model.vocab_size = 512  # For tiny presets (the tiny tokenizer has ~406 tokens).
  c.model.tokenizer = ""  # Empty: `model.path`, or a tiny tokenizer built in the output dir.
  c.model.param_dtype = "float32"
  c.model.attention_backend = "auto"  # cudnn on NVIDIA GPUs, splash on TPUs, xla on CPUs.
  c.model.chat_format = ""  # Empty: the model family's (qwen2_vl; Qwen3-VL: qwen3_vl, or
  # qwen3_vl_nothink for Instruct); docs/chat_format.md.
  c.model.scan_layers = False  # True: decoder layers stacked, run by a scan (one compiled layer).
  c.model.lora = common.lora()  # rank > 0: the model carries LoRA adapters (docs/lora.md).

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic", "files" (RL/eval parquet, ShareGPT JSONL) or "tfds".
  c.data.paths = ""  # Comma-separated data files for source="files".
  c.data.tfds_name = ""  # source="tfds": the set launch.prepare_tfds wrote (--name),
  c.data.tfds_dir = ""  # ... under this directory (--data_dir), local or mounted,
  c.data.tfds_split = "train"  # ... this split of it (--split).
  c.data.skip_bad = False  # Skip (and count) records that cannot be read, instead of stopping.
  # No data.drop_oversized here: launch.rollout trains on nothing, so no record or trajectory is
  # dropped for not fitting a batch (launch.sft and launch.rl have it).
  c.data.synthetic_size = 8
  c.data.synthetic_seed = 0
  c.data.limit = 0  # Use only the first N records (0: all).
  c.data.min_pixels = 0  # 0: the checkpoint's (or the family's) setting.
  c.data.max_pixels = 28 * 28 * 64

  # The sampler, as the RL recipes' `rollout` section (codevision_jax.rl.rollouts.build_policy).
  c.rollout = ml_collections.ConfigDict()
  c.rollout.group_size = 1  # Trajectories per record.
  c.rollout.slots = 8  # Trajectories in flight (decoded together).
  c.rollout.temperature = 1.0  # 0: greedy.
  c.rollout.top_k = 0  # 0: off.
  c.rollout.top_p = 1.0  # 1: off.
  c.rollout.steps_per_call = 32  # Decode steps per device call between tool-call checks.
  c.rollout.chunk = 128  # Prefill chunk of prompts and tool turns.

  c.agent = ml_collections.ConfigDict()  # codevision_jax.sampling.agent.AgentConfig
  c.agent.max_turns = 12  # Assistant turns, as CodeVision.
  c.agent.max_total_tokens = 4096  # Prompt + response tokens per trajectory.
  c.agent.max_tool_response_tokens = 10000
  c.agent.max_images = 16  # Input and tool images of one trajectory.
  c.agent.tool_timeout_s = 10.0  # CPU seconds per tool call.
  c.agent.max_stdout_chars = 512  # Of the code's printed output shown to the model.
  c.agent.system_prompt = True  # CodeVision's system prompt and tool schema in every prompt.

  c.executor = ml_collections.ConfigDict()
  c.executor.urls = ""  # Comma-separated service URLs; empty: start a local service.
  c.executor.workers = 2  # Workers of the local service.

  c.judge = ml_collections.ConfigDict()  # As the RL recipes' (codevision_jax.rl.judge).
  c.judge.url = ""  # OpenAI-compatible base URL (e.g. http://judge:8000/v1); empty: rule only.
  c.judge.model = ""
  c.judge.max_concurrency = 8  # Verdicts in flight.
  c.judge.timeout_s = 30.0
  c.judge.retries = 2

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.mesh.num_devices = 1  # The sampler's devices (0: all).
  c.mesh.rules = ()  # Empty: parallel.DEFAULT_RULES.
  return c
