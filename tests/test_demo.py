"""`make demo`'s pipeline at test size: SFT, GRPO, export and reload, the orientation eval with
the tool on and off, and the closing table that names the report."""

import json
import os
import sys

from configs import tiny
from launch import demo


def test_the_whole_pipeline(tmp_path):
  cfg = tiny.get_config()
  cfg.sft.train.steps = 6
  cfg.sft.train.checkpoint_every = 6
  cfg.sft.data.synthetic_size = 16
  cfg.train.rounds = 1
  cfg.train.checkpoint_every = 1
  cfg.rollout.prompts = 2
  cfg.algo.mini_batch_prompts = 2
  cfg.rollout.group_size = 2
  cfg.orientation.size = 1
  cfg.orientation.transforms = ("none", "rotate_180")
  workdir = str(tmp_path)
  stages = demo.run(cfg, workdir)
  assert stages["sft"]["loss"] is not None
  assert stages["rl"]["last"] is not None
  assert "config.json" in stages["export"]["files"] and stages["export"]["parameters"] > 0
  suite = stages["eval"]["suites"]["synthetic"]
  assert set(suite) == {"on", "off"}
  assert set(suite["on"]["by_transform"]) == {"none", "rotate_180"}
  report = json.load(open(os.path.join(workdir, "eval", "report.json")))
  assert "step" not in report["meta"]["model"]  # The HF export was evaluated.
  assert any("toy model" in n for n in report["meta"]["notes"])
  table = demo.summary(stages, workdir)
  for text in (
    "1 SFT",
    "2 GRPO",
    "3 export",
    "4 eval, tools on",
    "4 eval, tools off",
    "smoke test",
    os.path.join(workdir, "eval", "report.html"),
  ):
    assert text in table, text
  # Accuracy beside reward; the held-out claim said plainly; commands a fresh shell runs.
  first, last = stages["rl"]["first"], stages["rl"]["last"]
  assert (
    f"rollout accuracy {first['accuracy']:.2f} -> {last['accuracy']:.2f}, reward "
    f"{first['reward/score']:.2f} -> {last['reward/score']:.2f}"
  ) in table
  assert "this demo does not show that RL raised held-out accuracy" in table
  assert f"{sys.executable} -m launch.view" in table or ".venv/bin/python -m launch.view" in table
  assert "tensorboard --logdir" in table and " python -m " not in table
