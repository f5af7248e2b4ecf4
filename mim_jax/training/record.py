"""The run record: what a workdir remembers of its run besides the train state. Before a
resume, the config is compared with workdir/config.json (`check_resume`); each resume
with changed fields is appended to config.json's history (`record_config`); steps that an
earlier attempt logged and an exact resume recomputes are not logged twice
(`already_logged`); each process's position in its input stream is saved with every
checkpoint (`InputPosition`)."""
import json
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mim_jax import checkpoint, events

# Config fields that change what is logged or kept, not the computed steps: a resume
# that changes only these is exact (see already_logged).
BOOKKEEPING_FIELDS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                      "image_summary_every_steps", "num_summary_images",
                      "max_nonfinite_steps", "evals.", "profile_steps")


def _flatten(tree: dict, prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def flat_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """{dotted field: its value as JSON} of every field of `config`."""
  return _flatten(json.loads(config.to_json_best_effort()))


def config_changes(old: ml_collections.ConfigDict,
                   new: ml_collections.ConfigDict) -> Dict[str, list]:
  """{dotted field: [old value, new value]} of the fields that differ (as JSON values;
  a field only one of them has shows None on the other side)."""
  old_fields, new_fields = flat_fields(old), flat_fields(new)
  return {key: [old_fields.get(key), new_fields.get(key)]
          for key in sorted(set(old_fields) | set(new_fields))
          if old_fields.get(key) != new_fields.get(key)}


def describe_changes(changes: Dict[str, list]) -> str:
  return ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 state) -> Optional[Dict[str, list]]:
  """Before anything is written: when `workdir` has checkpoints, the changes from its
  config.json ({field: [old, new]}; None without a config.json). A change that alters
  the saved train state (model, method, optimizer kind: arrays added, removed or
  reshaped) is refused with the changed fields; config.json stays as it is.

  Other changes (lr, steps, batch size, logging, ...) are accepted: a run that diverged
  must resume from an earlier checkpoint with a lower lr, and a longer schedule or
  another batch size is a deliberate decision; `record_config` logs them and appends
  them to config.json's history. Such a resume is no longer the uninterrupted run.
  """
  if not checkpoint.checkpoint_dir(workdir).is_dir():
    return None  # (process 0 may create it while another process is here: no barrier below)
  manager = checkpoint.open_for_reading(workdir)
  try:
    if not manager.all_steps():
      return None
    try:
      changes = config_changes(checkpoint.read_config(workdir), config)
    except FileNotFoundError:
      changes = None
    differences = checkpoint.state_layout_differences(manager, state)
  finally:
    manager.close()
  if differences:
    changed = (describe_changes(changes) if changes else
               "none found" if changes is not None else "unknown: no config.json")
    shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
    raise ValueError(
        f"This config cannot resume the run in {workdir}: its train state differs from the "
        f"checkpoints' ({len(differences)} arrays: {shown}). Changed config fields: "
        f"{changed}. Resume with the run's config ({workdir}/config.json, left unchanged) "
        "or start a new workdir.")
  return changes


def record_config(workdir: str, config: ml_collections.ConfigDict,
                  changes: Optional[Dict[str, list]], step: int) -> None:
  """workdir/config.json := `config`; a resume (`changes` not None) with changes logs
  them and adds {"step", "changes"} to the history kept in config.json."""
  history = []
  if changes is not None:
    try:
      history = checkpoint.read_config_history(workdir)
    except FileNotFoundError:
      pass
    if changes:
      logging.warning("Resuming at step %d with a changed config (recorded in %s/config.json"
                      "): %s", step, workdir, describe_changes(changes))
      history = history + [{"step": step, "changes": changes}]
  checkpoint.write_config(workdir, config, history)


def already_logged(workdir: str, start_step: int,
                   changes: Optional[Dict[str, list]]) -> int:
  """The last step not to log again. An attempt that stopped after its last checkpoint
  (a failed save, a kill, a damaged checkpoint) logged steps beyond `start_step`; a
  resume with the same config (`changes` only in BOOKKEEPING_FIELDS) recomputes exactly
  those values, so they stay as logged: the newest logged step. Otherwise `start_step`
  (with another config the recomputed steps differ and are logged again)."""
  if changes is None:
    return start_step
  if any(not key.startswith(BOOKKEEPING_FIELDS) for key in changes):
    return start_step
  logged = events.last_step(workdir)
  if logged > start_step:
    logging.info("Steps %d..%d were logged before the resume and recompute exactly; they "
                 "are not logged again.", start_step + 1, logged)
  return max(logged, start_step)


class InputPosition:
  """This process's position in its train element stream (see mim_jax/data/pipeline.py)
  and the unreadable images it skipped; saved with every checkpoint."""

  def __init__(self, next_element: int, skipped: int = 0, global_batch_size: int = 0):
    self.next_element = next_element
    self.skipped = skipped
    self.global_batch_size = global_batch_size

  @classmethod
  def resume(cls, data_state: Optional[dict], step: int, global_batch_size: int):
    """From a checkpoint's data item; without a usable one, from the step count."""
    index, count = jax.process_index(), jax.process_count()
    if data_state and len(data_state["next_element"]) == count and (
        data_state["global_batch_size"] == global_batch_size):
      return cls(data_state["next_element"][index], data_state["skipped_images"][index],
                 global_batch_size)
    if data_state:
      logging.warning("The checkpoint's input position was written by %d processes with "
                      "batch %d; continuing from step %d's nominal position instead.",
                      len(data_state["next_element"]), data_state["global_batch_size"], step)
    return cls(step * (global_batch_size // count), 0, global_batch_size)

  def advance(self, elements: np.ndarray) -> None:
    """Account for a batch whose examples had stream positions `elements`."""
    consumed = int(elements[-1]) + 1
    self.skipped += consumed - self.next_element - len(elements)
    self.next_element = consumed

  def gathered(self) -> dict:
    """Every process's position (a collective: all processes call it at the same step)."""
    local = np.array([self.next_element, self.skipped], np.int64)
    rows = (multihost_utils.process_allgather(local) if jax.process_count() > 1
            else local[None])
    return {"next_element": [int(v) for v in rows[:, 0]],
            "skipped_images": [int(v) for v in rows[:, 1]],
            "global_batch_size": self.global_batch_size}
