"""Record sizes are cached per data file: a second start reads them instead of tokenising; a
changed file, tokenizer or image setting, or a corrupt entry, sizes again; skip_bad counts and
errors are the same cached and cold; worker processes give the serial sizes."""

import dataclasses
import logging
import os

import numpy as np
import pytest

from codevision_jax.data import encode, size_cache, sizing, synthetic
from codevision_jax.data.sources import ConversationSource
from codevision_jax.data.writers import write_sft_jsonl
from codevision_jax.processing import image as image_lib, tokenizer as tok_lib
from codevision_jax.train import loop
from configs import tiny_sft

SETTINGS = image_lib.ImageSettings.for_model_type("qwen2_5_vl", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tok_lib.load_tokenizer(tok_lib.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def write_records(directory, n=8, seed=1, damage=()):
  """Short synthetic SFT records as JSONL; `damage` is the indices whose image is truncated."""
  convs = synthetic.generate(n, seed=seed, kinds=("word",), p_small=0.0)
  for c in convs:
    c.messages = [m for m in c.messages if m["role"] != "system"]
    c.tools = None
  path = directory / "data.jsonl"
  write_sft_jsonl(convs, str(path))
  for index in damage:
    image = directory / "data_images" / f"{index:06d}_0.png"
    image.write_bytes(image.read_bytes()[:200])
  return path


@pytest.fixture
def calls(monkeypatch):
  """Counts `encode.record_size` calls (the tokenising) in this process."""
  count = {"n": 0}
  real = encode.record_size

  def counted(*args):
    count["n"] += 1
    return real(*args)

  monkeypatch.setattr(encode, "record_size", counted)
  return count


def sizes(path, tok, cache, settings=SETTINGS, **kw):
  return size_cache.record_sizes(ConversationSource.from_files([str(path)]), tok, settings, cache_dir=str(cache), **kw)


def test_second_start_reads_the_cache(tmp_path, tok, calls):
  path, cache = write_records(tmp_path), tmp_path / "cache"
  cold = sizes(path, tok, cache)
  assert calls["n"] == 8 and len(os.listdir(cache)) == 1
  np.testing.assert_array_equal(cold, sizing.record_sizes(ConversationSource.from_files([str(path)]), tok, SETTINGS))
  calls["n"] = 0
  np.testing.assert_array_equal(sizes(path, tok, cache), cold)
  assert calls["n"] == 0  # Read, not tokenised.


def test_a_changed_file_tokenizer_or_image_setting_sizes_again(tmp_path, tok, calls):
  path, cache = write_records(tmp_path), tmp_path / "cache"
  original, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
  cold = sizes(path, tok, cache)
  calls["n"] = 0
  # The image settings.
  bigger = dataclasses.replace(SETTINGS, max_pixels=28 * 28 * 64)
  sizes(path, tok, cache, settings=bigger)
  assert calls["n"] == 8
  # The tokenizer.
  other = tok_lib.load_tokenizer(tok_lib.build_tiny_tokenizer(str(tmp_path / "tok2"), vocab_size=320))
  calls["n"] = 0
  sizes(path, other, cache)
  assert calls["n"] == 8
  # The file (rewritten with other records, then only touched).
  write_records(tmp_path, n=6, seed=2)
  calls["n"] = 0
  changed = sizes(path, tok, cache)
  assert calls["n"] == 6 and len(changed) == 6
  os.utime(path, ns=(1, 1))
  calls["n"] = 0
  sizes(path, tok, cache)
  assert calls["n"] == 6
  assert len(os.listdir(cache)) == 5  # One entry per key; the first is still read:
  path.write_bytes(original)
  os.utime(path, ns=(mtime, mtime))
  calls["n"] = 0
  np.testing.assert_array_equal(sizes(path, tok, cache), cold)
  assert calls["n"] == 0


def test_a_corrupt_entry_is_sized_again_and_rewritten(tmp_path, tok, calls, caplog):
  path, cache = write_records(tmp_path), tmp_path / "cache"
  cold = sizes(path, tok, cache)
  (entry,) = cache.iterdir()
  entry.write_bytes(entry.read_bytes()[:100])  # Torn.
  calls["n"] = 0
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(sizes(path, tok, cache), cold)
  assert calls["n"] == 8 and "ignoring the size cache entry" in caplog.text
  calls["n"] = 0
  np.testing.assert_array_equal(sizes(path, tok, cache), cold)
  assert calls["n"] == 0
  assert [p.name for p in cache.iterdir()] == [entry.name]  # No temporary files left.


def test_skip_bad_counts_and_errors_are_the_same_cached(tmp_path, tok, calls, caplog):
  path, cache = write_records(tmp_path, damage=(2, 5)), tmp_path / "cache"
  with pytest.raises(ValueError) as cold_error:
    sizes(path, tok, cache)
  assert not cache.exists() or not list(cache.iterdir())  # Stopped at record 2: nothing written.
  with caplog.at_level(logging.WARNING):
    cold = sizes(path, tok, cache, skip_bad=True)
  cold_log, calls["n"] = caplog.text, 0
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    cached = sizes(path, tok, cache, skip_bad=True)
  assert calls["n"] == 0
  np.testing.assert_array_equal(cached, cold)
  assert list(np.flatnonzero(cold[:, 0] == encode.BAD_RECORD)) == [2, 5]
  assert "skipping 2 of 8 records" in caplog.text and caplog.text == cold_log
  with pytest.raises(ValueError) as cached_error:
    sizes(path, tok, cache)
  assert str(cached_error.value) == str(cold_error.value)
  assert f"{path}:2: image 0" in str(cold_error.value)


def test_the_training_run_drops_the_same_records_cached(tmp_path, calls):
  path = write_records(tmp_path, damage=(2, 5))
  c = tiny_sft.get_config()
  c.data.source, c.data.paths, c.data.skip_bad = "files", str(path), True
  c.data.buckets, c.data.max_pixels, c.mesh.num_devices = (512,), 28 * 28 * 4, 1
  c.data.drop_oversized = True
  runs = []
  for _ in range(2):
    calls["n"] = 0
    runs.append((loop.build(c, str(tmp_path / "run")).plan, calls["n"]))
  (cold, cold_calls), (cached, cached_calls) = runs
  assert (cold_calls, cached_calls) == (8, 0)
  assert cold.num_dropped == cached.num_dropped == 2
  assert os.listdir(tmp_path / "run" / "size_cache")
  c.data.size_cache = "off"
  calls["n"] = 0
  loop.build(c, str(tmp_path / "run"))
  assert calls["n"] == 8


def test_processes_after_the_first_read_its_entries(tmp_path, tok, calls):
  path, cache = write_records(tmp_path), tmp_path / "cache"
  waits = []
  # Another process on a folder process 0 has not written: it sizes, and writes nothing.
  alone = sizes(path, tok, cache, process_index=1, barrier=lambda: waits.append(1))
  assert calls["n"] == 8 and not cache.exists() and waits == [1]
  sizes(path, tok, cache, process_index=0, barrier=lambda: waits.append(0))
  calls["n"] = 0
  np.testing.assert_array_equal(sizes(path, tok, cache, process_index=1, barrier=lambda: waits.append(1)), alone)
  assert calls["n"] == 0 and waits == [1, 0, 1]


def test_records_from_no_file_are_not_cached(tmp_path, tok, calls):
  convs = synthetic.generate(4, seed=0)
  out = size_cache.record_sizes(convs, tok, SETTINGS, cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(out, sizing.record_sizes(convs, tok, SETTINGS))
  assert not (tmp_path / "cache").exists()


def test_workers_give_the_serial_sizes(tmp_path, tok):
  path = write_records(tmp_path, n=40, damage=(3, 31))
  source = ConversationSource.from_files([str(path)])
  serial = sizing.measure(source, tok, SETTINGS)
  parallel = sizing.measure(source, tok, SETTINGS, workers=2, label="data.jsonl")
  np.testing.assert_array_equal(parallel.sizes, serial.sizes)
  assert parallel.bad == serial.bad and sorted(serial.bad) == [3, 31]
  stopped = sizing.measure(source, tok, SETTINGS, workers=2, stop_at_bad=True)
  assert not stopped.complete and sorted(stopped.bad) == [3]
