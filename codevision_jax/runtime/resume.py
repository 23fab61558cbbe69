"""What changed between a checkpoint's config and the config a run resumes with, and what to do.

A resumed run continues exactly where it stopped only if what it trains on and how it trains are
unchanged. Settings that do not touch that (logging, checkpoint cadence, the mesh, data loading
workers, where the executor or the judge runs, ...) may change freely. Any other change stops the
run before it starts, naming each field with its old and new value, unless
`train.allow_config_change` is set (then each is logged as a warning). More steps than the run
had are allowed with a note (the learning-rate schedule stretches to the new length).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Fields (or sections, with a trailing dot) whose changes keep the resumed run exact.
FREE = (
  "train.log_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.async_checkpoints",
  "train.sigterm_grace_s",
  "train.peak_tflops",
  "train.resume_step",
  "train.allow_config_change",
  "train.save_rollouts",
  "train.steps",
  "train.rounds",
  "data.workers",
  "data.prefetch_buffer",
  "data.size_cache",
  "mesh.",
  "distributed.",
  "executor.urls",
  "executor.workers",
  "executor.call_deadline_s",
  "judge.max_concurrency",
  "judge.timeout_s",
  "judge.retries",
  "eval.",
  "demo.",
)

# Fields added after checkpoints were written with configs that lack them: absent in the saved
# config and at these values now, they change nothing (None: any value; `data.drop_oversized`
# only decides whether records no batch holds stop the run or are dropped, and says which).
ADDED = {
  "model.chat_format": "",
  "data.drop_oversized": None,
  "model.lora.rank": 0,
  "model.lora.alpha": None,
  "model.lora.dropout": None,
  "model.lora.targets": None,
  "model.lora.base_dtype": None,
  "train.packing": None,
  "rollout.kv_page_size": 0,
  "rollout.kv_pool_tokens": None,
}
_ABSENT = object()


def _added_unchanged(key: str, old, new) -> bool:
  base = next((f for f in ADDED if key == f or key.endswith("." + f)), None)
  return base is not None and old is _ABSENT and (ADDED[base] is None or new == ADDED[base])


def _flat(tree, prefix="") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = list(value) if isinstance(value, tuple) else value
  return out


def changes(saved: dict, current: dict) -> list[tuple[str, object, object]]:
  """(field, saved value, current value) of every field that differs, sorted."""
  a, b = _flat(saved), _flat(current)
  return [
    (k, a.get(k, _ABSENT), b.get(k, _ABSENT))
    for k in sorted(set(a) | set(b))
    if a.get(k, _ABSENT) != b.get(k, _ABSENT) and not _added_unchanged(k, a.get(k, _ABSENT), b.get(k, _ABSENT))
  ]


def check(saved: dict, current, *, step: int, steps_key: str = "train.steps") -> None:
  """Raises ValueError for changes that break exact resumption (unless
  `train.allow_config_change`), logs the others."""
  current = current.to_dict() if hasattr(current, "to_dict") else current
  found = [
    (k, old, new)
    for k, old, new in changes(saved, current)
    if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in FREE)
  ]

  def show(v):
    return "(absent)" if not isinstance(v, (str, int, float, bool, list, type(None))) else repr(v)

  for k, old, new in changes(saved, current):
    if k == steps_key and isinstance(old, int) and isinstance(new, int) and new > old > 0:
      log.warning("%s was %d and is now %d: the learning-rate schedule now spans %d steps", k, old, new, new)
  if not found:
    return
  listing = "; ".join(f"{k}: {show(old)} -> {show(new)}" for k, old, new in found)
  if current.get("train", {}).get("allow_config_change"):
    log.warning("resuming from step %d with a changed config (allowed): %s", step, listing)
    return
  raise ValueError(
    f"the checkpoint of step {step} was written with another config: {listing}. "
    "Resuming would not continue that run exactly. Use the same settings, a new "
    "--workdir for a new run, or --config.train.allow_config_change=True to resume "
    "with these changes anyway"
  )
