"""Orbax checkpoints under `workdir/checkpoints`.

Each checkpoint holds two items: 'state' (the TrainState: params, EMA targets, optimizer
state, rng, step counters) and 'data' (JSON: each process's position in its input
stream, so that training resumes on exactly the next example). Saves are asynchronous,
every `config.checkpoint_every_steps` and at the last step; the last
`config.keep_checkpoints` are kept; restore takes the newest one that reads.

A workdir is a local directory or a URL that `etils.epath` and Orbax read and write
(`gs://bucket/run`: every host of a TPU pod sees the same checkpoints and config.json).
"""
import json
import os
from typing import Any, Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

PyTree = Any
CONFIG_FILE = "config.json"


def workdir_path(workdir: str) -> epath.Path:
  """`workdir` as a path object: URLs (gs://, s3://) as given, local paths absolute."""
  workdir = os.fspath(workdir)
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def write_text(workdir: str, name: str, text: str) -> None:
  """Create `workdir` and write `text` to workdir/name, from process 0 only."""
  path = workdir_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (path / name).write_text(text)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """workdir/config.json (from process 0): the config the run was started with."""
  write_text(workdir, CONFIG_FILE, config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """workdir/config.json, or FileNotFoundError naming the missing file."""
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def create_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(workdir_path(workdir) / "checkpoints", options=options)


def abstract_with_shardings(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying the target shardings (what Orbax restores into)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def restore(manager: ocp.CheckpointManager, step: int,
            abstract_state: PyTree) -> Tuple[PyTree, dict]:
  """(state, data position) of checkpoint `step`, the state restored into
  `abstract_state`'s structure and shardings."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored.state, restored.data


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: PyTree) -> Optional[Tuple[PyTree, dict]]:
  """(state, data position) of the newest checkpoint that restores, or None if there is
  none.

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


def restore_subtree(workdir: str, step: int, abstract: PyTree) -> PyTree:
  """Only the arrays named by `abstract` (a sub-tree of the saved TrainState's fields,
  e.g. {'params': {'encoder': ...}}, as ShapeDtypeStructs with shardings) from checkpoint
  `step` of `workdir`; nothing else (optimizer state, other parameters) is read."""
  manager = ocp.CheckpointManager(workdir_path(workdir) / "checkpoints",
                                  options=ocp.CheckpointManagerOptions(create=False))
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                     dtype=x.dtype), abstract)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=restore_args, partial_restore=True)))
  finally:
    manager.close()
  return restored.state


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, data_state: dict) -> bool:
  """Start an asynchronous save of `state` and the JSON-able `data_state`."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
