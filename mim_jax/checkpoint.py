"""Orbax checkpoints under `workdir/checkpoints`.

Each checkpoint holds two items: 'state' (the TrainState: params, EMA targets, optimizer
state, rng, step counters) and 'data' (JSON: each process's position in its input
stream, so that training resumes on exactly the next example). Saves are asynchronous,
every `config.checkpoint_every_steps` and at the last step; the last
`config.keep_checkpoints` are kept; restore takes the newest one that reads.

Failures: a save that fails in the background (disk full, permission denied) is noticed
by `Saver.check` a step or so later and raised as one `SaveError` that names the step, the
cause and the newest complete checkpoint. A checkpoint that cannot be restored while an
older one can is damaged: the trainer moves it to `checkpoints/unrestorable/` (kept, never
deleted) so that the run can save that step again. workdir/config.json is the config of
the run; each resume with a changed config appends the changes under its "history" key.

A workdir is a local directory or a URL that `etils.epath` and Orbax read and write
(`gs://bucket/run`: every host of a TPU pod sees the same checkpoints and config.json).
"""
import functools
import json
import logging as py_logging
import os
import re
import sys
import traceback
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store  # not exported (orbax 0.12.8)

PyTree = Any
CONFIG_FILE = "config.json"
HISTORY_KEY = "history"  # config.json: [{"step": resumed at, "changes": {field: [old, new]}}]
UNRESTORABLE_DIR = "unrestorable"  # under checkpoints/: damaged checkpoints moved aside


class SaveError(RuntimeError):
  """A checkpoint could not be written; the message names the step, the cause and the
  newest complete checkpoint."""


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


def write_config(workdir: str, config: ml_collections.ConfigDict,
                 history: Optional[List[dict]] = None) -> None:
  """workdir/config.json (from process 0): the run's config, and with `history` the
  changes made on each resume ([{"step": ..., "changes": {field: [old, new]}}])."""
  text = config.to_json_best_effort(indent=2)
  if history:
    text = json.dumps(dict(json.loads(text), **{HISTORY_KEY: history}), indent=2)
  write_text(workdir, CONFIG_FILE, text)
  logging.info("Config (written to %s):\n%s", workdir_path(workdir) / CONFIG_FILE, config)


def _read_config_json(workdir: str) -> dict:
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist.")
  return json.loads(path.read_text())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """workdir/config.json (without its resume history), or FileNotFoundError naming the
  missing file."""
  fields = _read_config_json(workdir)
  fields.pop(HISTORY_KEY, None)
  return ml_collections.ConfigDict(fields)


def read_config_history(workdir: str) -> List[dict]:
  """The resume history recorded in workdir/config.json ([] if none)."""
  return _read_config_json(workdir).get(HISTORY_KEY, [])


def checkpoint_dir(workdir: str) -> epath.Path:
  """workdir/checkpoints, where Orbax keeps one directory per step."""
  return workdir_path(workdir) / "checkpoints"


# Opening a manager with these options creates nothing and waits at no cross-process
# barrier (Orbax's create-directory and root-metadata barriers are collectives that every
# process must reach in the same order), so one process may open it on a decision of its
# own, e.g. because workdir/checkpoints exists: another process may just have created it.
READ_ONLY = dict(create=False, read_only=True, save_root_metadata=False)


def _item_handlers():
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}


def _write_arrays_whole_in_one_process() -> None:
  """Orbax's replica-parallel saving (its default off GPUs) has each replica of a
  replicated array write a slice of it, so that the hosts of a pod share the writing. In
  one process every replica is on this host, and the slices only add a slice op per array
  and device, compiled at the first save (docs/RESULTS.md "Checkpoint saves in one
  process": 5.5 s instead of 0.27 for the tiny test MAE, later saves 3x slower). One
  process writes each array whole from its first replica (the handler orbax registers,
  otherwise unchanged)."""
  whole = _whole_array_handler()
  if jax.process_count() == 1 and ocp.type_handlers.get_type_handler(jax.Array) is not whole:
    ocp.type_handlers.register_type_handler(jax.Array, whole, override=True)  # once


@functools.lru_cache(maxsize=None)
def _whole_array_handler() -> ocp.type_handlers.ArrayHandler:
  return ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                        use_replica_parallel=False)


def create_manager(workdir: str, config, clean_up_temporary: bool = False
                   ) -> ocp.CheckpointManager:
  """The manager of workdir/checkpoints that saves. Every process opens it at the same
  point (opening it is a cross-process barrier). `clean_up_temporary` (the trainer, which
  owns the directory) removes the temporary directories of saves that never finished."""
  _write_arrays_whole_in_one_process()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True,
      cleanup_tmp_directories=clean_up_temporary)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers=_item_handlers())


def open_for_reading(workdir: str) -> ocp.CheckpointManager:
  """A manager that only reads workdir/checkpoints (see READ_ONLY: no barrier)."""
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=ocp.CheckpointManagerOptions(**READ_ONLY),
                               item_handlers=_item_handlers())


def _array_layout(tree: PyTree) -> Dict[str, Tuple[tuple, str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves if hasattr(leaf, "shape")}


def state_layout_differences(manager: ocp.CheckpointManager,
                             abstract_state: PyTree) -> Optional[List[str]]:
  """How the train state saved in the newest checkpoint whose metadata reads differs
  from `abstract_state` (arrays added, removed or reshaped; [] if none), or None when
  no checkpoint's metadata reads."""
  ours = _array_layout(ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True))
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = _array_layout(manager.item_metadata(step)["state"])
    except Exception:  # pylint: disable=broad-except  (damaged: restore_latest decides)
      continue
    if not saved:
      continue
    lines = [f"{key} {saved[key][0]} {saved[key][1]} -> {ours[key][0]} {ours[key][1]}"
             for key in sorted(set(saved) & set(ours)) if saved[key] != ours[key]]
    lines += [f"{key} only in the checkpoint" for key in sorted(set(saved) - set(ours))]
    lines += [f"{key} only in this config's state" for key in sorted(set(ours) - set(saved))]
    return lines
  return None


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


_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec(?:\[\d+\])?='.*?'\]")


def one_line(error: BaseException, limit: int = 200) -> str:
  """`Type: message` on one line, the message in at most `limit` characters: without
  TensorStore's specs (~1,000 characters of JSON each), and of a long chain of
  'context: ...: cause' only the last links, where TensorStore puts the OS error."""
  text = _TENSORSTORE_SPEC.sub("", " ".join(str(error).split()))
  *contexts, kept = text.split(": ")
  while contexts and len(contexts[-1]) + len(kept) + 2 <= limit:
    kept = f"{contexts.pop()}: {kept}"
  if len(kept) > limit:
    kept = kept[:limit - 3] + "..."
  return f"{type(error).__name__}: {'...: ' if contexts else ''}{kept}"


def restore_latest(manager: ocp.CheckpointManager, abstract_state: PyTree,
                   set_aside_damaged: bool = False) -> Optional[Tuple[PyTree, dict]]:
  """(state, data position) of the newest checkpoint that restores, or None if there is
  none.

  A save killed mid-write stays a temporary directory that Orbax never lists. A listed
  checkpoint that fails to read while an older one restores is damaged: it is skipped
  with one warning each, and with `set_aside_damaged` (the trainer, which saves those
  steps again) moved to checkpoints/unrestorable/<step>. If none restores, nothing is
  moved and the error lists them (the config, not the files, may be what differs).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failed = []
  for step in steps:
    try:
      restored = restore(manager, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint)
      failed.append((step, e))
      continue
    for bad_step, error in failed:
      if set_aside_damaged:
        moved_to = _set_aside(manager, bad_step)
        logging.warning("Checkpoint %d cannot be restored (%s); moved it to %s and resumed "
                        "from checkpoint %d.", bad_step, one_line(error), moved_to, step)
      else:
        logging.warning("Checkpoint %d in %s cannot be restored (%s); read checkpoint %d "
                        "instead.", bad_step, manager.directory, one_line(error), step)
    if failed and set_aside_damaged:
      manager.reload()
    return restored
  if steps:  # never start over on top of checkpoints that exist but do not fit
    raise RuntimeError(
        f"None of the checkpoints {steps} in {manager.directory} can be restored into this "
        f"config's train state (newest: {one_line(failed[0][1])}). Use the config the run "
        "was started with, or a new workdir; if the files are damaged, move them out of "
        f"{manager.directory}.")
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Move checkpoint `step` to checkpoints/unrestorable/<step>[.n] (process 0 moves it;
  on gs:// TensorFlow's gfile renames a directory object by object)."""
  root = epath.Path(manager.directory)
  target = root / UNRESTORABLE_DIR / str(step)
  if jax.process_index() == 0:
    suffix = 1
    while target.exists():
      target = root / UNRESTORABLE_DIR / f"{step}.{suffix}"
      suffix += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    (root / str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"mim_jax:set_aside:{step}")
  return target


def restore_subtree(workdir: str, step: int, abstract: PyTree) -> PyTree:
  """Only the arrays named by `abstract` (a sub-tree of the saved TrainState's fields,
  e.g. {'params': {'encoder': ...}}, as ShapeDtypeStructs with shardings) from checkpoint
  `step` of `workdir`; nothing else (optimizer state, other parameters) is read."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir),
                                  options=ocp.CheckpointManagerOptions(**READ_ONLY))
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


class Saver:
  """The train loop's asynchronous saves, whose failures stop the run with one SaveError.

  Orbax writes a checkpoint on background threads and re-raises a failure there only
  when it is next waited for. `save` first waits for the previous save (as Orbax's own
  save would), `check`, called every step, looks at a flag and waits only once the
  background save has ended, so a failure surfaces a step or so after its save while a
  successful save costs nothing extra; `finish` waits at the end of the run.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self.pending = None  # step of the save running in the background

  def save(self, step: int, state: PyTree, data_state: dict) -> None:
    self.finish(stopped_at=step)
    try:
      save(self.manager, step, state, data_state)
    except Exception as e:  # pylint: disable=broad-except  (any failure of the write)
      raise self.error(step, e, stopped_at=step) from e
    self.pending = step

  def check(self, step: int) -> None:
    """SaveError if the background save has failed; at once otherwise."""
    if self.pending is not None and not self.manager.is_saving_in_progress():
      self.finish(stopped_at=step)

  def finish(self, stopped_at: Optional[int] = None) -> None:
    """Wait for the background save; SaveError naming its step if it failed."""
    pending, self.pending = self.pending, None
    if pending is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (any failure of the write)
      raise self.error(pending, e, stopped_at) from e

  def error(self, step: int, error: BaseException, stopped_at: Optional[int]) -> SaveError:
    """Step, cause (the innermost exception) and the newest complete checkpoint."""
    while error.__cause__ is not None:
      error = error.__cause__
    self.manager.reload()
    complete = [s for s in self.manager.all_steps() if s != step]
    if complete:
      newest = (f"the newest complete checkpoint is step {max(complete)} in "
                f"{self.manager.directory}. Fix the cause (free space, permissions), then run "
                "the same command again to resume from it.")
    else:
      newest = (f"there is no complete checkpoint in {self.manager.directory}. Fix the cause "
                "(free space, permissions), then run the same command again; it starts from "
                "step 0.")
    stop = "" if stopped_at is None else f"Stopped at step {stopped_at}; "
    return SaveError(f"Saving checkpoint {step} failed: {one_line(error)}. {stop}{newest}")

  def close(self) -> None:
    """Wait for and release Orbax's threads; errors here are logged, not raised (a
    SaveError, if any, was raised by `finish`)."""
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error("Closing the checkpoint manager: %s", one_line(e))


class QuietOrbax(py_logging.Filter):
  """Orbax logs dozens of INFO lines per checkpoint; keep its warnings and errors, but
  drop the tracebacks of failed writes on its background threads: Orbax re-raises the
  failure when the save is waited for, and the trainer reports it then as one SaveError
  that carries the cause (`Saver`). asyncio's 'exception was never
  retrieved' for the save's other writes (one per array, the same cause) are dropped
  too: those raised in Orbax's code at any time (they can come just before the report),
  any once it is made (`save_failed`)."""

  save_failed = False

  def filter(self, record):
    if record.exc_info and "/orbax/" in record.pathname:
      return False
    if record.name == "asyncio" and "never retrieved" in record.msg and (
        self.save_failed or _raised_in_orbax(record.exc_info)):
      return False
    return "/orbax/" not in record.pathname or record.levelno >= py_logging.WARNING


def _raised_in_orbax(exc_info) -> bool:
  tb = exc_info[2] if exc_info else None
  return any("/orbax/" in frame.filename for frame in traceback.extract_tb(tb))


def ignore_closed_event_loops(unraisable, default=sys.unraisablehook):
  """After a failed write Orbax closes its asyncio loop while TensorStore still
  completes the other writes, each reporting 'Event loop is closed' as an unraisable
  exception (dozens of tracebacks); the failure itself is raised by the save."""
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return
  default(unraisable)


def quiet_orbax_logs(handler: py_logging.Handler) -> QuietOrbax:
  """Install `QuietOrbax` on the log `handler` (absl's, in mim_jax/main.py) and
  `ignore_closed_event_loops` as the unraisable hook; returns the filter (set its
  `save_failed` once a SaveError is reported)."""
  quiet = QuietOrbax()
  handler.addFilter(quiet)
  sys.unraisablehook = ignore_closed_event_loops
  return quiet
