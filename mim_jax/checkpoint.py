"""Orbax checkpoints under `workdir/checkpoints`: async saves every
`config.checkpoint_every_steps`, the last `config.keep_checkpoints` kept, restore of the
latest one against the abstract (shape + sharding) state."""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

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
  """The newest checkpoint restored into `abstract_state`'s structure, or None."""
  step = manager.latest_step()
  return None if step is None else restore(manager, step, abstract_state)


def maybe_save(manager: ocp.CheckpointManager, step: int, state: PyTree, every_steps: int,
               is_last: bool) -> bool:
  """Start an async save at every `every_steps`-th step and at the last step."""
  if step % every_steps and not is_last:
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=True)
