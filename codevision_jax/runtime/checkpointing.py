"""Orbax checkpoints of a training run: asynchronous, every N steps, the last K kept.

A checkpoint `<workdir>/checkpoints/<step>/` (runtime.layout) holds four items (`layout.ITEMS`):
  state   the train state {"step", "params", "opt_state"} (sharded arrays, restored onto the mesh)
  frozen  the parameters that do not train
  data    the Grain iterator state (JSON), so the data order continues where it stopped
  config  the run's config (JSON), for the record
"""

from __future__ import annotations

import logging
import os
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath

from codevision_jax.runtime import layout

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.every = every
    self.saved_step: int | None = None  # The step of the last save started by this object.
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(every, 1), max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=layout.ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, frozen, data_state: dict, config: dict, *, force: bool = False) -> bool:
    """Starts saving (returns at once with async saves) if `step` is due or `force`."""
    if not force and not (self.every and step % self.every == 0):
      return False
    saved = self.manager.save(
      step,
      force=force,
      args=ocp.args.Composite(
        **{
          layout.STATE: ocp.args.StandardSave(state),
          layout.FROZEN: ocp.args.StandardSave(frozen),
          layout.DATA: ocp.args.JsonSave(data_state),
          layout.CONFIG: ocp.args.JsonSave(config),
        }
      ),
    )
    if saved:
      self.saved_step = step
    return saved

  def restore(self, step: int, abstract_state, abstract_frozen):
    """-> (state, frozen, data_state, config), arrays placed as the abstract trees' shardings."""
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        **{
          layout.STATE: ocp.args.StandardRestore(abstract_state),
          layout.FROZEN: ocp.args.StandardRestore(abstract_frozen),
          layout.DATA: ocp.args.JsonRestore(),
          layout.CONFIG: ocp.args.JsonRestore(),
        }
      ),
    )
    return tuple(out[name] for name in layout.ITEMS)

  def restore_resumable(self, abstract_state, abstract_frozen, step: int | None = None):
    """(step, state, frozen, data_state, config) to resume from: checkpoint `step`, or the newest
    one that restores; None when there is none.

    A damaged checkpoint (a file missing or cut short) is named with what is wrong and moved
    aside to `<step>.damaged` (kept, out of the way of new saves), with a warning, and the next
    older one is tried. An asked-for `step` that is damaged or missing raises, naming the finished
    steps. Checkpoints newer than an asked-for step are moved aside to `<step>.superseded`, so
    that training can write those steps again.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    set_aside = set()
    _silence_failed_restore_noise()
    if step is not None and step not in steps:
      raise ValueError(
        f"train.resume_step {step}: no such checkpoint in {self.directory}; the finished ones are {sorted(steps)}"
      )
    for s in [step] if step is not None else steps:
      mismatch = self._layout_mismatch(s, abstract_state, abstract_frozen)
      if mismatch:  # Another model's checkpoint, not a damaged one: keep it where it is.
        raise ValueError(
          f"checkpoint {s} in {self.directory} holds parameters laid out for another model "
          f"({mismatch}). Was model.scan_layers, the model, or train.freeze_* changed? Resume "
          "with the run's settings, or train in a new workdir (python -m launch.export turns "
          "this run into an HF checkpoint that model.path loads in any layout)"
        )
      try:
        state, frozen, data, config = self.restore(s, abstract_state, abstract_frozen)
      except Exception as e:  # noqa: BLE001 - TensorStore and Orbax raise many kinds.
        reason = _root_cause(e)
        if step is not None:
          raise ValueError(
            f"checkpoint {s} in {self.directory} cannot be restored ({reason}); "
            f"pick another with --config.train.resume_step (finished: "
            f"{sorted(steps)}), or leave it unset to use the newest intact one"
          ) from None
        log.warning(
          "checkpoint %d in %s is damaged (%s): moved to %d.damaged; trying the next older one",
          s,
          self.directory,
          reason,
          s,
        )
        self._set_aside(s, "damaged")
        set_aside.add(s)
        continue
      for newer in [n for n in steps if n > s and n not in set_aside]:
        log.warning("resuming from step %d: the newer checkpoint %d is moved to %d.superseded", s, newer, newer)
        self._set_aside(newer, "superseded")
      return s, state, frozen, data, config
    if steps:
      raise ValueError(
        f"every checkpoint in {self.directory} is damaged (moved to *.damaged); "
        "remove the directory to start the run over"
      )
    return None

  def _layout_mismatch(self, step: int, abstract_state, abstract_frozen) -> str | None:
    """How the parameter paths saved at `step` differ from the model's, or None (also when its
    metadata cannot be read: the restore then says what is damaged)."""

    def paths(tree):  # "params/model/layers/0/...": integer and string keys alike
      return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in p)
        for p, _ in jax.tree_util.tree_leaves_with_path(tree)
      }

    for name, want in ((layout.STATE, {"params": abstract_state["params"]}), (layout.FROZEN, abstract_frozen)):
      try:
        # The item's own metadata: a checkpointer's `metadata` would also look for step metadata
        # inside the item directory and warn "Metadata file does not exist" on a healthy one.
        meta = ocp.PyTreeCheckpointHandler().metadata(
          epath.Path(layout.item(os.path.join(self.directory, str(step)), name))
        )
        saved = getattr(meta, "item_metadata", meta)
        saved = {"params": saved["params"]} if name == layout.STATE else saved
      except Exception:  # noqa: BLE001 - unreadable metadata: let the restore report it.
        return None
      have, need = paths(saved), paths(want)
      if have != need:
        extra, lack = sorted(have - need), sorted(need - have)
        return (
          f"{name}: {len(lack)} of the model's arrays are not there, e.g. "
          f"{lack[0] if lack else '-'}; {len(extra)} saved ones the model lacks, e.g. "
          f"{extra[0] if extra else '-'}"
        )
    return None

  @property
  def directory(self) -> str:
    return str(self.manager.directory)

  def _set_aside(self, step: int, why: str) -> None:
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.{why}"
    k = 1
    while os.path.exists(dst):
      dst, k = f"{src}.{why}-{k}", k + 1
    os.rename(src, dst)
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _root_cause(error: BaseException) -> str:
  """The first line of the innermost error of a chain (TensorStore's says which file and what)."""
  lines = []
  while error is not None and len(lines) < 8:
    text = str(error).strip()
    lines.append(text.splitlines()[0][:300] if text else type(error).__name__)
    error = error.__cause__ or error.__context__
  specific = [l for l in lines if not l.startswith("Encountered error while reading array")]
  return (specific or lines)[-1]


def _silence_failed_restore_noise() -> None:
  """When a restore fails, Orbax's remaining reads finish on a closed event loop and each
  reports itself ('Event loop is closed', 'Encountered error while reading array index') as an
  unraisable exception, hundreds of lines in all. The failure is reported once, by name, so
  those reports are dropped; every other one still goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "_drops_restore_noise", False):
    return

  def hook(unraisable):
    text = str(unraisable.exc_value)
    if "Event loop is closed" in text or "Encountered error while reading array" in text:
      return
    previous(unraisable)

  hook._drops_restore_noise = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(
    lambda record: "Encountered error while reading array" not in record.getMessage()
  )


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with shardings, the target of a restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_items(step_dir: str, abstract_items: dict) -> dict:
  """Some items of the checkpoint in `step_dir` (`<checkpoints>/<step>`), and of each only the
  subtree its abstract tree names (e.g. the parameters of a train state without its optimizer
  state), placed by the abstract arrays' shardings."""
  checkpointer = ocp.PyTreeCheckpointer()
  out = {
    name: checkpointer.restore(
      layout.item(step_dir, name),
      args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True
      ),
    )
    for name, abstract in abstract_items.items()
  }
  missing = [
    jax.tree_util.keystr(path)
    for path, leaf in jax.tree_util.tree_leaves_with_path(out)
    if isinstance(leaf, jax.ShapeDtypeStruct)
  ]
  if missing:  # A partial restore leaves what the checkpoint lacks abstract: say so, not later.
    raise ValueError(
      f"{step_dir}: the checkpoint has no {missing[0]} ({len(missing)} arrays the "
      "model needs are missing); it was written for a different model"
    )
  return out
