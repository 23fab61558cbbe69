"""Orbax checkpoints of a training run: asynchronous, every N steps, the last K kept.

A checkpoint `<workdir>/checkpoints/<step>/` holds four items:
  state   the train state {"step", "params", "opt_state"} (sharded arrays, restored onto the mesh)
  frozen  the parameters that do not train
  data    the Grain iterator state (JSON), so the data order continues where it stopped
  config  the run's config (JSON), for the record
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.every = every
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1), max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(directory, options=options,
                                         item_names=("state", "frozen", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, frozen, data_state: dict, config: dict, *, force: bool = False) -> bool:
    """Starts saving (returns at once with async saves) if `step` is due or `force`."""
    if not force and not (self.every and step % self.every == 0):
      return False
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), frozen=ocp.args.StandardSave(frozen),
        data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)))

  def restore(self, step: int, abstract_state, abstract_frozen):
    """-> (state, frozen, data_state, config), arrays placed as the abstract trees' shardings."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), frozen=ocp.args.StandardRestore(abstract_frozen),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    return out["state"], out["frozen"], out["data"], out["config"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with shardings, the target of a restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_items(step_dir: str, abstract_items: dict) -> dict:
  """Some items of the checkpoint in `step_dir` (`<checkpoints>/<step>`), and of each only the
  subtree its abstract tree names (e.g. the parameters of a train state without its optimizer
  state), placed by the abstract arrays' shardings."""
  checkpointer = ocp.PyTreeCheckpointer()
  return {name: checkpointer.restore(
      os.path.join(step_dir, name),
      args=ocp.args.PyTreeRestore(item=abstract,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True))
          for name, abstract in abstract_items.items()}
