"""Every config file states the command that runs it; recipes for one entry point have the same
fields; the model recipes are their base (configs/base_sft.py, configs/base_rl.py) with the model
named, and carry CodeVision's values (shared/CODEVISION.md, quoted below) for both families."""

import importlib
import os

import ml_collections
import pytest

from codevision_jax.models import presets
from codevision_jax.processing import code_tool, tokenizer

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODULES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "__init__.py")
SHARED = ["base_rl", "base_sft", "common"]  # What configs build on; no get_config: not run alone.
CONFIGS = [m for m in MODULES if m not in SHARED]
SFT_RECIPES = ["tiny_sft", "qwen2_5_vl_7b_sft", "qwen3_vl_8b_sft"]
RL_RECIPES = ["tiny_rl", "qwen2_5_vl_7b_rl", "qwen3_vl_8b_rl"]
FAMILIES = {  # model recipe prefix -> (published shapes' preset, tiny preset, CodeVision chat format)
  "qwen2_5_vl_7b": ("qwen2_5_vl_7b", "qwen2_5_vl_tiny", "qwen2_vl"),
  "qwen3_vl_8b": ("qwen3_vl_8b", "qwen3_vl_tiny", "qwen3_vl"),
}
MODEL_KEYS = {"model.path", "model.preset"}  # What a model recipe adds to its base.

# shared/CODEVISION.md's RL recipe, its tool limits and reward weights: (config key, value, the
# sentence it comes from).
CODEVISION_RL = [
  ("rollout.group_size", 8, "RL recipe: Group size 8 rollouts per prompt"),
  ("rollout.prompts", 64, "RL recipe: train batch 64 prompts"),
  ("algo.mini_batch_prompts", 32, "RL recipe: mini-batch 32"),
  ("optim.lr", 1e-6, "RL recipe: lr 1e-6"),
  ("algo.advantage", "grpo", "RL recipe: Advantages: GRPO (reward minus group mean, over group std)"),
  ("algo.clip_low", 0.2, "RL recipe: clip-low 0.2"),
  ("algo.clip_high", 0.28, "RL recipe: clip-high 0.28"),
  ("algo.clip_c", 10.0, "RL recipe: dual-clip constant 3.0-10.0 (reference uses 10.0)"),
  ("algo.kl_coef", 0.001, "RL recipe: KL to the reference policy as a loss term (coefficient 0.001"),
  ("algo.kl_kind", "low_var_kl", 'RL recipe: "low-variance" k3 estimator'),
  ("agent.max_turns", 12, "The one tool: up to 12 assistant turns"),
  ("agent.max_total_tokens", 16384 + 16384, "The one tool: 16k prompt and 16k response tokens"),
  ("agent.max_tool_response_tokens", 10000, "The one tool: 10k tokens per tool response"),
  ("data.max_pixels", 8192 * 28 * 28, "The one tool: max image size 8192*28*28 pixels for the model"),
  ("reward.format", 0.1, "Reward: the reference weights w_fmt 0.1"),
  ("reward.alpha", 1.0, "Reward: alpha 1.0"),
  ("reward.beta", 0.0, "Reward: beta 0.0"),
  ("reward.gamma", 0.5, "Reward: gamma 0.5"),
  ("reward.emerge", 0.2, "Reward: w_emerge 0.2"),
  ("reward.tool_error_penalty", -0.05, "The one tool: costs a small penalty (-0.05 in the reference)"),
]
RL_EPOCHS = ((1, 2), "RL recipe: 1-2 epochs")

# The SFT recipe the model recipes state (README, configs/base_sft.py's docstring): (key, value, the
# words of base_sft's docstring that state it).
SFT_RECIPE = [
  ("optim.lr", 1e-5, "lr 1e-5"),
  ("optim.schedule", "cosine", "cosine decay"),
  ("optim.warmup_ratio", 0.05, "warmup ratio 0.05"),
  ("data.num_epochs", 2, "2 epochs"),
  ("data.buckets", (2048, 4096, 8192, 16384, 32768), "cut off at 32768 tokens"),
  ("data.max_pixels", 262144, "images at most 262144"),
  ("train.freeze_vision_tower", True, "vision tower and merger frozen"),
  ("train.freeze_merger", True, "vision tower and merger frozen"),
  ("train.compute_dtype", "bfloat16", "bfloat16 compute"),
  ("model.param_dtype", "float32", "float32 master weights"),
  ("data.batch_size", 8, "8 x 4 = 32 sequences per optimizer step"),
  ("train.grad_accum", 4, "8 x 4 = 32 sequences per optimizer step"),
]


def config(name, *args):
  return importlib.import_module(f"configs.{name}").get_config(*args)


def fields(cfg, prefix=""):
  out = set()
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict) and key != "shape":
      out |= fields(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out


def value(cfg, key):
  for part in key.split("."):
    cfg = cfg[part]
  return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_starts_with_the_command(name):
  module = importlib.import_module(f"configs.{name}")
  assert module.__doc__.startswith("python -m "), name
  assert f"configs/{name}.py" in module.__doc__.splitlines()[0]


@pytest.mark.parametrize("name", SHARED)
def test_what_configs_build_on_is_not_a_config_of_its_own(name):
  module = importlib.import_module(f"configs.{name}")
  assert not hasattr(module, "get_config"), f"configs/{name}.py would be taken for a config to run"
  assert "Not a config to run" in module.__doc__, name


def test_sft_recipes_state_the_same_fields():
  expected = fields(config("tiny_sft"))
  for name in SFT_RECIPES:
    assert fields(config(name)) == expected, name


def test_rl_recipes_state_the_same_fields():
  tiny = config("tiny_rl")
  expected = {f for f in fields(tiny) if not f.startswith("sft.")}
  for name in RL_RECIPES[1:]:
    assert fields(config(name)) == expected, name
  # The tiny recipe's SFT section is a whole SFT recipe.
  assert fields(tiny.sft) == fields(config("tiny_sft"))


@pytest.mark.parametrize("kind", ["sft", "rl"])
def test_a_model_recipe_is_its_base_with_the_model_named(kind):
  base = importlib.import_module(f"configs.base_{kind}").recipe()
  recipes = [config(f"{family}_{kind}") for family in FAMILIES]
  for family, c in zip(FAMILIES, recipes):
    assert fields(c) - fields(base) == MODEL_KEYS, family
    assert (c.model.path, c.model.preset) == ("", ""), f"{family}: the checkpoint comes from the command line"
  # Both families train by the one recipe: every value the same.
  assert recipes[0].to_dict() == recipes[1].to_dict()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rl_recipes_carry_codevisions_values(family):
  c = config(f"{family}_rl")
  for key, expected, source in CODEVISION_RL:
    actual = value(c, key)
    assert actual == expected and type(actual) is type(expected), (
      f"{family}_rl: {key} = {actual!r}; CODEVISION.md says {expected!r} ({source})"
    )
  epochs, source = RL_EPOCHS
  assert c.data.num_epochs in epochs, f"{family}_rl: data.num_epochs = {c.data.num_epochs}; {source}"
  # "no KL in the reward; no entropy bonus": no field could add either.
  assert not [k for k in fields(c) if "entropy" in k or (k.startswith("reward.") and "kl" in k)]
  # "code at most 2048 characters": the tool's own limit, not a config field.
  assert code_tool.MAX_CODE_CHARS == 2048, "CODEVISION.md: code at most 2048 characters"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sft_recipes_carry_the_values_their_docstring_states(family):
  c = config(f"{family}_sft")
  doc = importlib.import_module("configs.base_sft").__doc__
  for key, expected, words in SFT_RECIPE:
    actual = value(c, key)
    assert actual == expected, f"{family}_sft: {key} = {actual!r}; configs/base_sft.py says {words!r}"
    assert words in " ".join(doc.split()), f"configs/base_sft.py's docstring no longer says {words!r}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["sft", "rl"])
def test_model_recipes_use_the_familys_chat_format(family, kind):
  """CODEVISION.md, per family: qwen2_vl (Qwen2.5-VL), qwen3_vl (Qwen3-VL), LLaMA-Factory's."""
  published, _, expected = FAMILIES[family]
  chat_format = config(f"{family}_{kind}").model.chat_format
  name, _ = tokenizer.resolve_chat_format(None, chat_format, presets.preset(published).model_type)
  assert name == expected, f"{family}_{kind}: model.chat_format={chat_format!r} gives {name}, not {expected}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["sft", "rl"])
def test_the_smoke_variant_swaps_in_the_familys_tiny_model(family, kind):
  name = f"{family}_{kind}"
  recipe, smoke = config(name), config(name, "smoke")
  assert smoke.model.preset == FAMILIES[family][1] and smoke.data.source == "synthetic"
  assert fields(smoke) == fields(recipe)
  changed = {k for k in fields(recipe) if value(smoke, k) != value(recipe, k)}
  # Only what makes it small: the model, the data and the run's length and geometry.
  assert changed and all(
    k.split(".")[0] in ("model", "data", "train", "rollout", "algo", "agent", "executor") for k in changed
  ), changed
  assert recipe.model.preset == "", "the smoke variant changed the recipe itself"
  with pytest.raises(ValueError, match=r"'smok' is not one of this recipe's: .*:smoke"):
    config(name, "smok")
