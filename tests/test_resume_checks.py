"""Resuming: a damaged newest checkpoint is named and set aside and the run falls back to the
newest intact one; a chosen step resumes; a changed config is refused with what changed (or
allowed with the override); asking for fewer steps than done says so and trains nothing."""

import logging
import os

import pytest

from codevision_jax.train import loop
from configs import tiny_sft


def config(**train):
  c = tiny_sft.get_config()
  c.data.synthetic_size, c.data.buckets, c.data.max_pixels = 8, (512,), 28 * 28 * 4
  c.data.drop_oversized = True
  c.train.steps, c.train.checkpoint_every, c.mesh.num_devices = 4, 2, 1
  for k, v in train.items():
    c.train[k] = v
  return c


def damage(workdir, step):
  """Removes one data file of the checkpoint's train state and cuts every other one short (which
  file holds which array varies from run to run: damage them all)."""
  d = os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d")
  first, *others = sorted(os.listdir(d))
  os.remove(os.path.join(d, first))
  for name in others:
    with open(os.path.join(d, name), "r+b") as f:
      f.truncate(10)


@pytest.fixture
def trained(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(config(), workdir)
  return workdir


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(trained, caplog):
  damage(trained, 4)
  with caplog.at_level(logging.WARNING):
    result = loop.train(config(steps=6), trained)
  warning = next(r.getMessage() for r in caplog.records if "is damaged" in r.getMessage())
  assert f"checkpoint 4 in {trained}/checkpoints is damaged (" in warning and "moved to 4.damaged" in warning
  assert "Error reading" in warning  # What is wrong, from TensorStore: which file, which error.
  assert [h["step"] for h in result.history] == [3, 4, 5, 6]  # From step 2.
  assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["4", "4.damaged", "6"]


def test_a_chosen_step_and_a_damaged_chosen_step(trained):
  result = loop.train(config(steps=4, resume_step=2), trained)
  assert [h["step"] for h in result.history] == [3, 4]
  assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["2", "4", "4.superseded"]
  damage(trained, 2)
  with pytest.raises(
    ValueError,
    match=r"checkpoint 2 in .* cannot be restored \(.*\); pick another "
    r"with --config.train.resume_step \(finished: \[2, 4\]\)",
  ):
    loop.train(config(resume_step=2), trained)
  with pytest.raises(ValueError, match=r"train.resume_step 3: no such checkpoint .* \[2, 4\]"):
    loop.train(config(resume_step=3), trained)


def test_config_changes_are_refused_unless_allowed(trained, caplog):
  c = config(steps=6)
  c.optim.lr, c.data.seed = 5e-4, 7
  with pytest.raises(
    ValueError,
    match=r"the checkpoint of step 4 was written with another config: "
    r"data.seed: 0 -> 7; optim.lr: 0.001 -> 0.0005\. .*"
    r"--config.train.allow_config_change=True",
  ):
    loop.train(c, trained)
  c.train.allow_config_change = True
  with caplog.at_level(logging.WARNING):
    result = loop.train(c, trained)
  assert any("changed config (allowed)" in r.getMessage() for r in caplog.records)
  assert [h["step"] for h in result.history] == [5, 6]


def test_fewer_steps_than_done_trains_nothing_and_says_so(trained, caplog):
  with caplog.at_level(logging.WARNING):
    result = loop.train(config(steps=3), trained)
  assert result.history == []
  assert any(
    "the checkpoint is at step 4 and the run has 3 steps: nothing to train" in r.getMessage() for r in caplog.records
  )


def test_another_parameter_layout_is_refused_and_the_checkpoints_kept(trained):
  """Resuming with model.scan_layers flipped (stacked against per-layer parameters) is a
  different model, not a damaged checkpoint: the run stops naming the setting, and nothing is
  moved aside."""
  c = config(steps=6)
  c.model.scan_layers = True
  with pytest.raises(
    ValueError,
    match=r"checkpoint 4 in .* holds parameters laid out for another "
    r"model \(state: .*/layers/input_layernorm/weight.*\)\. Was model.scan_layers",
  ):
    loop.train(c, trained)
  assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["2", "4"]
  result = loop.train(config(steps=6), trained)  # The run's own settings still resume.
  assert [h["step"] for h in result.history] == [5, 6]


def test_fields_added_since_a_checkpoint_at_their_neutral_values_resume():
  """A checkpoint written before model.chat_format / data.drop_oversized existed resumes when they
  hold their neutral values; another chat format is a change like any other."""
  from codevision_jax.runtime import resume

  saved = {"model": {"preset": "x"}, "data": {"seed": 0}, "sft": {"model": {"preset": "x"}}}
  current = {
    "model": {"preset": "x", "chat_format": ""},
    "data": {"seed": 0, "drop_oversized": False},
    "sft": {"model": {"preset": "x", "chat_format": ""}},
  }
  resume.check(saved, current, step=3)
  current["model"]["chat_format"] = "qwen3_vl"
  with pytest.raises(ValueError, match=r"model\.chat_format: \(absent\) -> 'qwen3_vl'"):
    resume.check(saved, current, step=3)
