"""Every config file states the command that runs it, and recipes for one entry point have the
same fields (each states all of its values; only the tiny RL recipe builds on the tiny SFT one, for
its SFT section)."""

import importlib
import os

import ml_collections
import pytest

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "__init__.py")
SFT_RECIPES = ["tiny_sft", "qwen2_5_vl_7b_sft", "qwen3_vl_8b_sft"]
RL_RECIPES = ["tiny_rl", "qwen2_5_vl_7b_rl", "qwen3_vl_8b_rl"]


def fields(cfg, prefix=""):
  out = set()
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict) and key != "shape":
      out |= fields(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_starts_with_the_command(name):
  module = importlib.import_module(f"configs.{name}")
  assert module.__doc__.startswith("python -m "), name
  assert f"configs/{name}.py" in module.__doc__.splitlines()[0]


def test_sft_recipes_state_the_same_fields():
  expected = fields(importlib.import_module("configs.tiny_sft").get_config())
  for name in SFT_RECIPES:
    assert fields(importlib.import_module(f"configs.{name}").get_config()) == expected, name


def test_rl_recipes_state_the_same_fields():
  tiny = importlib.import_module("configs.tiny_rl").get_config()
  expected = {f for f in fields(tiny) if not f.startswith("sft.")}
  for name in RL_RECIPES[1:]:
    assert fields(importlib.import_module(f"configs.{name}").get_config()) == expected, name
  # The tiny recipe's SFT section is a whole SFT recipe.
  assert fields(tiny.sft) == fields(importlib.import_module("configs.tiny_sft").get_config())
