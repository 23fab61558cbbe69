"""data.source="tfds": the synthetic set written as files and prepared as a TFDS set (ArrayRecord,
images as bytes, no TensorFlow) gives the same records and the same SFT batches, in the same
order for the same seed, as the files; clear errors for bad config keys and bad records; the
prepare command as a subprocess."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from codevision_jax.data import pipeline, readers, sizing, synthetic, tfds_source, writers
from codevision_jax.models import presets
from codevision_jax.processing import image as image_lib, tokenizer as tok_lib
from codevision_jax.runtime import run_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4)
NUM = 24


def data_cfg(**kw):
  c = ml_collections.ConfigDict(
    dict(source="files", paths="", skip_bad=False, tfds_name="", tfds_dir="", tfds_split="train")
  )
  c.update(kw)
  return c


def prepare_command(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.prepare_tfds", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """{"sft": jsonl path (images as PNG files), "rl": parquet path, "dir": the TFDS data_dir with
  sets "syn_sft" (prepared here) and "syn_rl" (prepared by the command, a subprocess)}."""
  root = tmp_path_factory.mktemp("tfds")
  convs = synthetic.generate(NUM, seed=3)
  for c in convs:  # Short conversations: no system prompt or tool schemas.
    c.messages = [m for m in c.messages if m["role"] != "system"]
    c.tools = None
  sft, rl, tfds_dir = str(root / "sft.jsonl"), str(root / "rl.parquet"), str(root / "tfds")
  writers.write_sft_jsonl(convs, sft)
  writers.write_rl_parquet(synthetic.generate(NUM, seed=4), rl)
  summary = tfds_source.prepare([sft], kind="sft", name="syn_sft", data_dir=tfds_dir)
  assert summary["records"] == NUM and summary["skipped"] == 0 and summary["bytes"] > 0
  done = prepare_command(f"--input={rl}", "--kind=rl", "--name=syn_rl", f"--data_dir={tfds_dir}")
  assert done.returncode == 0, done.stderr
  return {"sft": sft, "rl": rl, "dir": tfds_dir, "command_output": done.stdout, "root": root}


def fields(conv):
  """A conversation's fields but its origin, images as their encoded bytes."""
  out = dataclasses.asdict(conv)
  del out["origin"]
  out["images"] = [im if isinstance(im, bytes) else open(im, "rb").read() for im in conv.images]
  return out


def test_rl_records_are_the_files_records(data):
  files = run_setup.conversation_source(data_cfg(paths=data["rl"]), kind="rl")
  tfds = run_setup.conversation_source(data_cfg(source="tfds", tfds_name="syn_rl", tfds_dir=data["dir"]), kind="rl")
  assert isinstance(tfds, tfds_source.TfdsSource) and len(tfds) == len(files) == NUM
  for i in range(NUM):
    assert fields(tfds[i]) == fields(files[i])
  assert tfds[3].origin == f"tfds syn_rl/train[3] from {data['rl']}:3"
  assert tfds[-1].ground_truth == files[NUM - 1].ground_truth
  assert "tensorflow" not in sys.modules  # Prepared and read without TensorFlow.


def test_sft_batches_are_the_files_batches(data):
  """The same sizes, plan and packed microbatches (every array, Grain's iterator, 2 epochs' first
  steps) from both sources; a Grain worker process reads the TFDS source too."""
  tok = tok_lib.load_tokenizer(tok_lib.build_tiny_tokenizer(str(data["root"] / "tok")))
  mc = presets.qwen2_5_vl_tiny(512).replace(
    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
    vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
    vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
  )
  spec = pipeline.BatchSpec(buckets=(512, 768), batch_size=2, patch_budget=96, max_images=4, sort_window=2)
  sources = {
    "files": run_setup.conversation_source(data_cfg(paths=data["sft"]), kind="sft"),
    "tfds": run_setup.conversation_source(
      data_cfg(source="tfds", tfds_name="syn_sft", tfds_dir=data["dir"]), kind="sft"
    ),
  }
  for i in range(NUM):
    assert fields(sources["tfds"][i]) == fields(sources["files"][i])
  sizes = {k: sizing.record_sizes(s, tok, SETTINGS) for k, s in sources.items()}
  np.testing.assert_array_equal(sizes["files"], sizes["tfds"])
  batches = {}
  for k, source in sources.items():
    plan = pipeline.BatchPlan(sizes[k], spec, seed=5, num_epochs=2)
    it = pipeline.make_iterator(plan, pipeline.BatchBuilder(source, tok, SETTINGS, spec, mc))
    batches[k] = [next(it) for _ in range(min(len(plan), 8))]
    assert len(plan) > plan.steps_per_epoch >= 3
  for a, b in zip(batches["files"], batches["tfds"]):
    assert sorted(a) == sorted(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
  source = pickle.loads(pickle.dumps(sources["tfds"]))  # What a Grain worker receives.
  assert fields(source[5]) == fields(sources["files"][5])
  plan = pipeline.BatchPlan(sizes["tfds"], spec, seed=5)
  worker = pipeline.make_iterator(plan, pipeline.BatchBuilder(sources["tfds"], tok, SETTINGS, spec, mc), workers=1)
  np.testing.assert_array_equal(next(worker)["input_ids"], batches["files"][0]["input_ids"])


def test_bad_config_keys_name_them(data):
  with pytest.raises(ValueError, match=r"data.tfds_name and data.tfds_dir .*launch.prepare_tfds"):
    run_setup.conversation_source(data_cfg(source="tfds", tfds_dir=data["dir"]), kind="sft")
  with pytest.raises(
    ValueError,
    match=r"data.tfds_name='nope'.*no prepared data set 'nope'.*"
    r"syn_rl, syn_sft.*launch.prepare_tfds",
  ):
    run_setup.conversation_source(data_cfg(source="tfds", tfds_name="nope", tfds_dir=data["dir"]), kind="sft")
  with pytest.raises(ValueError, match=r"does not exist"):
    run_setup.conversation_source(
      data_cfg(source="tfds", tfds_name="syn_sft", tfds_dir=data["dir"] + "_missing"), kind="sft"
    )
  with pytest.raises(ValueError, match=r"data.tfds_split='test'.*no split 'test'.*train"):
    run_setup.conversation_source(
      data_cfg(source="tfds", tfds_name="syn_sft", tfds_dir=data["dir"], tfds_split="test"), kind="sft"
    )
  with pytest.raises(ValueError, match=r"prepared with --kind=rl"):
    run_setup.conversation_source(data_cfg(source="tfds", tfds_name="syn_rl", tfds_dir=data["dir"]), kind="sft")
  with pytest.raises(ValueError, match=r"snake_case"):
    run_setup.conversation_source(data_cfg(source="tfds", tfds_name="Syn-SFT", tfds_dir=data["dir"]), kind="sft")
  with pytest.raises(ValueError, match=r"'synthetic', 'files', 'tfds'"):
    run_setup.conversation_source(data_cfg(source="tfrecord"), kind="sft")


def test_prepare_reports_bad_records_by_file_and_row(data, tmp_path):
  rows = [json.loads(line) for line in open(data["sft"])][:3]
  for r in rows:  # Absolute image paths: the file moves.
    r["images"] = [os.path.join(os.path.dirname(data["sft"]), p) for p in r["images"]]
  (tmp_path / "not_an_image.png").write_text("hello")
  rows[1]["images"][0] = str(tmp_path / "not_an_image.png")
  del rows[2]["messages"]
  bad = str(tmp_path / "bad.jsonl")
  with open(bad, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with pytest.raises(readers.RecordError, match=r"bad.jsonl: record 2: no \"messages\""):
    tfds_source.prepare([bad], kind="sft", name="bad", data_dir=str(tmp_path / "out"))
  del rows[2]
  with open(bad, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with pytest.raises(readers.RecordError, match=r"bad.jsonl: record 1: image 0: not an image"):
    tfds_source.prepare([bad], kind="sft", name="bad", data_dir=str(tmp_path / "out"))
  summary = tfds_source.prepare([bad], kind="sft", name="bad", data_dir=str(tmp_path / "out"), skip_bad=True)
  assert summary["records"] == 1 and summary["skipped"] == 1
  assert len(tfds_source.TfdsSource("bad", str(tmp_path / "out"))) == 1


def test_prepare_command(data, tmp_path):
  out = data["command_output"]
  assert f"wrote {NUM} rl records ({NUM} images" in out and "syn_rl/1.0.0" in out
  line = next(line for line in out.splitlines() if line.startswith("next: "))
  assert line.split(" -m ")[0].endswith("python")  # The venv's interpreter: a fresh shell runs it.
  assert line.endswith(
    f" -m launch.rl --config=CONFIG --workdir=WORKDIR --config.data.source=tfds "
    f"--config.data.tfds_name=syn_rl --config.data.tfds_dir={data['dir']}"
  )
  again = prepare_command(f"--input={data['rl']}", "--kind=rl", "--name=syn_rl", f"--data_dir={data['dir']}")
  assert again.returncode == 1
  assert "already exists" in again.stderr and "--overwrite" in again.stderr
  wrong_kind = prepare_command(f"--input={data['rl']}", "--kind=sft", "--name=x", f"--data_dir={tmp_path}")
  assert wrong_kind.returncode == 1
  assert "rl.parquet: record 0: no assistant turn to train on" in wrong_kind.stderr


def test_eval_suite_reads_a_prepared_set(data):
  """`--data=tfds:NAME@DIR` gives an eval suite the items of the parquet it was prepared from."""
  from evals import orientation, suites

  spec = f"tfds:syn_rl@{data['dir']}"
  items, bad = orientation.read_items("mvtoolbench", spec, limit=10)
  expected, expected_bad = suites.read_suite("mvtoolbench", data["rl"], limit=10)
  assert len(items) == 10 and not bad and not expected_bad
  for a, b in zip(items, expected):
    assert a.source == f"{spec}:{a.id}"
    assert dataclasses.replace(a, source="") == dataclasses.replace(b, source="")
  with pytest.raises(ValueError, match=r"tfds:NAME@DIR or tfds:NAME:SPLIT@DIR"):
    suites.read_suite("mvtoolbench", "tfds:syn_rl")
  with pytest.raises(ValueError, match=r"no split 'test'"):
    suites.read_suite("mvtoolbench", f"tfds:syn_rl:test@{data['dir']}")
