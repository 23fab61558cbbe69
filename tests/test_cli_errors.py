"""What a user sees when a launcher is given a mistake: one message naming the flag, field or file
and what to do, a non-zero exit, no traceback unless asked; `--help` lists the config fields and
exits 0. Each launcher runs in a subprocess, as a user runs it."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = [
  "launch.sft",
  "launch.rl",
  "launch.rollout",
  "launch.export",
  "launch.demo",
  "launch.prepare_tfds",
  "launch.view",
  "evals.orientation",
]


def run(*args, env=None, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, "CVJ_TRACEBACK": "", **(env or {})},
  )


@pytest.mark.parametrize(
  "module,config,field", [("launch.sft", "configs/tiny_sft.py", "steps"), ("launch.rl", "configs/tiny_rl.py", "rounds")]
)
def test_a_mistyped_config_field_is_one_line_naming_it(module, config, field, tmp_path):
  typo = field[:-1] + "z"
  proc = run(module, f"--config={config}", f"--config.train.{typo}=3", f"--workdir={tmp_path}")
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"{module}: error: --config.train.{typo}: the config has no field")
  assert f"did you mean --config.train.{field}?" in lines[0] and "--help" in lines[0]
  assert not os.listdir(tmp_path)  # Nothing started.


def test_help_lists_config_fields_and_exits_0():
  for module in LAUNCHERS:
    proc = run(module, "--help")
    assert proc.returncode == 0, (module, proc.stderr[-2000:])
    assert "--[no]verbose" in proc.stdout, module
  sft = run("launch.sft", "--help").stdout
  assert "config fields of --config (configs/tiny_sft.py" in sft
  assert "  train.steps = 60" in sft and "  data.drop_oversized = False" in sft
  rl = run("launch.rl", "--config=configs/qwen2_5_vl_7b_rl.py", "--help").stdout
  assert "configs/qwen2_5_vl_7b_rl.py" in rl and "  train.patch_budget = 65536" in rl


def test_a_user_error_is_one_message_and_a_traceback_only_when_asked(tmp_path):
  proc = run("launch.export", f"--workdir={tmp_path}/none", f"--out={tmp_path}/hf")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  assert (
    f"launch.export: error: {tmp_path}/none: no checkpoints directory; pass the --workdir "
    "of a launch.sft or launch.rl run"
  ) in proc.stderr
  for extra, env in (([], {"CVJ_TRACEBACK": "1"}), (["--verbose"], {})):
    proc = run("launch.export", f"--workdir={tmp_path}/none", f"--out={tmp_path}/hf", *extra, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "FileNotFoundError" in proc.stderr


def test_a_config_file_that_does_not_exist_is_named(tmp_path):
  proc = run("launch.sft", "--config=configs/nope.py", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "launch.sft: error: --config: the config file does not load" in proc.stderr
  assert "configs/nope.py" in proc.stderr


def test_an_unreachable_executor_is_named_by_the_setting_of_the_command(tmp_path):
  """The eval binary takes the URLs in --executor, launch.rl in --config.executor.urls: each
  message names its own; nothing was written before the check."""
  dead = "http://127.0.0.1:9"
  proc = run(
    "evals.orientation", f"--executor={dead}", "--tools=on", "--synthetic_size=1", f"--out={tmp_path / 'eval'}"
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "evals.orientation: error: no executor service answers /healthz" in proc.stderr
  assert f"{dead}:" in proc.stderr and "pass its URL in --executor" in proc.stderr
  assert "executor.urls" not in proc.stderr
  proc = run(
    "launch.rl",
    "--config=configs/tiny_rl.py",
    f"--config.executor.urls={dead}",
    f"--config.init.sft_workdir={tmp_path / 'sft'}",
    f"--workdir={tmp_path / 'rl'}",
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "launch.rl: error: no executor service answers /healthz" in proc.stderr
  assert "pass its URL in --config.executor.urls" in proc.stderr
  assert not (tmp_path / "rl" / "checkpoints").exists()


def test_a_config_check_is_one_message(tmp_path):
  """launch.rl refuses a held-out evaluation without held-out records before any work, in one
  message naming both fields."""
  proc = run(
    "launch.rl",
    "--config=configs/tiny_rl.py",
    "--config.data.source=files",
    "--config.data.paths=x.parquet",
    "--config.eval.every=1",
    f"--config.init.sft_workdir={tmp_path / 'sft'}",
    f"--workdir={tmp_path / 'rl'}",
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert (
    "launch.rl: error: eval.every is set but eval.paths is empty: held-out evaluation needs its own records"
  ) in proc.stderr


def test_a_config_variant_the_recipe_lacks_is_one_line_naming_it(tmp_path):
  proc = run("launch.sft", "--config=configs/qwen2_5_vl_7b_sft.py:smok", f"--workdir={tmp_path}/run")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert lines[0].startswith(
    "launch.sft: error: --config=configs/qwen2_5_vl_7b_sft.py:smok: config variant 'smok' is not one of this recipe's"
  ), lines[0]
  assert ":smoke" in lines[0]
  assert not os.path.exists(tmp_path / "run")  # Nothing started.
