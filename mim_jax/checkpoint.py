"""Orbax checkpoints under `workdir/checkpoints`: async saves every
`config.checkpoint_every_steps`, the last `config.keep_checkpoints` kept, restore of the
latest one against the abstract (shape + sharding) state."""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


def create_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def abstract_with_shardings(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying the target shardings (what Orbax restores into)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: PyTree) -> PyTree:
  """Checkpoint `step` restored into `abstract_state`'s structure and shardings."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: PyTree) -> Optional[PyTree]:
  """The newest checkpoint that restores into `abstract_state`, or None if there is none.

  A save killed mid-write stays a temporary directory that Orbax never lists; a listed
  checkpoint that fails to read (damaged files) is skipped with a warning in favour of
  the next older one.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore(manager, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint)
      logging.warning("Checkpoint %d in %s cannot be restored (%s: %s); trying an older one.",
                      step, manager.directory, type(e).__name__, e)
  if steps:  # never start over on top of checkpoints that exist but do not fit
    raise RuntimeError(f"None of the checkpoints {steps} in {manager.directory} can be "
                       "restored into this config's train state (see the warnings above). "
                       "Use the config the run was started with, or a new workdir.")
  return None


def maybe_save(manager: ocp.CheckpointManager, step: int, state: PyTree, every_steps: int,
               is_last: bool) -> bool:
  """Start an async save at every `every_steps`-th step and at the last step."""
  if step % every_steps and not is_last:
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=True)
