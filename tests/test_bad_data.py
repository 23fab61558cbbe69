"""Bad data is found before the first step, with messages that name the file, the record and the
image and say what to change; `data.skip_bad` skips and counts; a failure during training still
finishes the checkpoint being written."""

import pytest

from codevision_jax.data import synthetic
from codevision_jax.data.writers import write_sft_jsonl
from codevision_jax.train import loop
from codevision_jax.runtime import checkpointing
from configs import tiny_sft


def config(path, **train):
  c = tiny_sft.get_config()
  c.data.source, c.data.paths = "files", str(path)
  c.data.buckets, c.data.max_pixels = (512,), 28 * 28 * 4
  c.train.steps, c.train.checkpoint_every, c.mesh.num_devices = 2, 2, 1
  for k, v in train.items():
    c.train[k] = v
  return c


def write_records(tmp_path, n=8, damage=()):
  """Synthetic SFT records as JSONL; `damage` maps record index -> "truncated" or "garbage"."""
  convs = synthetic.generate(n, seed=1, kinds=("word",), p_small=0.0)
  for c in convs:
    c.messages = [m for m in c.messages if m["role"] != "system"]
    c.tools = None
  path = tmp_path / "data.jsonl"
  write_sft_jsonl(convs, str(path))
  for index, kind in dict(damage).items():
    image = tmp_path / "data_images" / f"{index:06d}_0.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\x00garbage" * 40)
  return path


def test_undecodable_images_are_named_before_the_first_step(tmp_path):
  path = write_records(tmp_path, damage={2: "truncated", 5: "garbage"})
  with pytest.raises(
    ValueError,
    match=rf"{path}:2: image 0 \(.*000002_0.png\) cannot be decoded: "
    r".*skip_bad=True",
  ):
    loop.build(config(path), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()  # Nothing started.
  # With skip_bad the two records are skipped and counted; training goes on without them.
  c = config(path)
  c.data.skip_bad = True
  run = loop.build(c, str(tmp_path / "run"))
  assert run.plan.num_dropped == 2
  result = loop.train(c, str(tmp_path / "run"))
  assert [h["step"] for h in result.history] == [1, 2]


def test_empty_files_and_records_that_fit_no_batch(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match=rf"0 records in {empty}: the file is empty"):
    loop.build(config(empty), str(tmp_path / "a"))
  path = write_records(tmp_path)
  c = config(path)
  c.data.buckets = (64,)
  with pytest.raises(
    ValueError,
    match=r"all 8 records are longer than the largest bucket 64 "
    r"\(shortest [\d,]+ tokens\); raise data.buckets",
  ):
    loop.build(c, str(tmp_path / "b"))
  c = config(path)
  c.data.patch_budget = 4
  with pytest.raises(
    ValueError,
    match=r"all 8 records have more image patches than "
    r"data.patch_budget 4 \(fewest \d+\); raise data.patch_budget",
  ):
    loop.build(c, str(tmp_path / "c"))


def test_a_failing_step_still_finishes_the_checkpoint_being_saved(tmp_path):
  path = write_records(tmp_path)

  def fail_after_step_2(step, _):
    if step == 2:
      raise RuntimeError("the host went away")

  c = config(path, steps=4)
  with pytest.raises(RuntimeError, match="the host went away"):
    loop.train(c, str(tmp_path / "run"), hooks=[fail_after_step_2])
  ckpt = checkpointing.Checkpointer(str(tmp_path / "run" / "checkpoints"), every=2, keep=2)
  assert ckpt.latest_step() == 2  # Written in full, asynchronously, before the error surfaced.
  resumed = loop.train(c, str(tmp_path / "run"))
  assert [h["step"] for h in resumed.history] == [3, 4]


def test_records_that_do_not_fit_are_refused_by_name_or_dropped_and_counted(tmp_path):
  """By default a record no batch can hold stops the run before step 1, named (file:index) with
  its size and the setting that would hold it; data.drop_oversized=True drops it, and the
  result, <workdir>/dropped_records.jsonl, TensorBoard and launch.sft's summary count it."""
  import json
  import os

  import numpy as np
  from tensorboard.backend.event_processing import event_accumulator

  from codevision_jax.data import sizing, sources
  from codevision_jax.runtime import run_setup
  from launch import summary

  path = write_records(tmp_path)
  c = config(path)
  tokenizer, _, settings = run_setup.model_parts(
    c, str(tmp_path / "tok"), run_setup.make_mesh(c.mesh), run_setup.mesh_rules(c.mesh)
  )
  sizes = sizing.record_sizes(sources.ConversationSource.from_files([str(path)]), tokenizer, settings)
  bucket = int(np.unique(sizes[:, 0])[-2])  # The longest records do not fit.
  long = [int(i) for i in np.flatnonzero(sizes[:, 0] > bucket)]
  assert 0 < len(long) < 8
  c.data.buckets = (bucket,)
  with pytest.raises(ValueError) as refused:
    loop.build(c, str(tmp_path / "run"))
  message = str(refused.value)
  assert message.startswith(f"{len(long)} of 8 records do not fit the batch geometry")
  assert "index counted from 0" in message and "data.drop_oversized=True" in message
  for i in long:
    assert (
      f"{path}:{i}: {int(sizes[i, 0]):,} tokens, more than the largest of data.buckets "
      f"({bucket},) (a bucket of {int(sizes[i, 0]):,} would hold it)"
    ) in message
  assert not (tmp_path / "run" / "checkpoints").exists()  # Refused before anything was written.

  c.data.drop_oversized = True
  c.train.steps = c.train.checkpoint_every = 1
  workdir = str(tmp_path / "run")
  result = loop.train(c, workdir)
  dropped = result.dropped
  assert (dropped["records"], dropped["of"]) == (len(long), 8)
  assert dropped["why"] == f"{len(long)} are longer than the largest bucket {bucket}"
  listed = [json.loads(l) for l in open(os.path.join(workdir, "dropped_records.jsonl"))]
  assert [d["record"] for d in listed] == [f"{path}:{i}" for i in long]
  assert [d["tokens"] for d in listed] == [int(sizes[i, 0]) for i in long]
  ea = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  ea.Reload()
  assert [e.value for e in ea.Scalars("data/dropped_records")] == [len(long)]
  text = summary.sft_text(workdir, result.last, dropped)
  assert (
    f"dropped {len(long)} of 8 records, not trained on: {len(long)} are longer than the "
    f"largest bucket {bucket}; listed in {workdir}/dropped_records.jsonl"
  ) in text
