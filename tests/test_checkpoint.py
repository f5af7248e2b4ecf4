"""mim_jax/checkpoint.py: a damaged checkpoint is moved aside (readers fall back past it), a
failed save stops the run naming it, a gs:// workdir goes through etils.epath."""
import errno
import json
import logging
import os
import re
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import checkpoint_steps, scalar_series, tiny_mae_config
from mim_jax import checkpoint, pretrain
from mim_jax.evaluation import pretrained


def same_arrays(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def logged_steps(workdir, tag="loss"):
  return [step for step, _ in scalar_series(str(workdir), tag, with_steps=True)]


def damage(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for name in files:  # every array and metadata file of the step
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


def test_a_damaged_checkpoint_is_moved_aside_and_the_run_continues_past_it(tmp_path, caplog):
  caplog.set_level(logging.WARNING, logger="absl")
  config = tiny_mae_config(num_train_steps=4, checkpoint_every_steps=2,
                           image_summary_every_steps=0)
  finished = pretrain.run(config, str(tmp_path))
  _, at_2 = pretrained.restore_state(str(tmp_path), step=2)
  damage(tmp_path / "checkpoints" / "4")
  _, read = pretrained.restore_state(str(tmp_path))  # reading falls back and moves nothing
  assert int(read.step) == 2 and checkpoint_steps(tmp_path) == [2, 4]
  same_arrays(at_2.params, read.params)
  _, encoder, _ = pretrained.load_encoder(str(tmp_path))  # so does reading an encoder
  same_arrays(at_2.params["encoder"], encoder)
  assert checkpoint_steps(tmp_path) == [2, 4]
  for rerun in (1, 2):  # the same command, each time with step 4 damaged
    caplog.clear()
    state = pretrain.run(config, str(tmp_path))
    notes = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert len(notes) == 1 and "resumed from checkpoint 2" in notes[0], notes
    assert int(state.step) == 4 and checkpoint_steps(tmp_path) == [2, 4]
    same_arrays(finished.params, state.params)  # steps 3 and 4 recomputed exactly
    if rerun == 1:
      damage(tmp_path / "checkpoints" / "4")
  assert sorted(os.listdir(tmp_path / "checkpoints" / "unrestorable")) == ["4", "4.1"]
  assert (tmp_path / "checkpoints" / "unrestorable" / "4.1" / "state").is_dir()  # kept
  assert logged_steps(tmp_path) == [1, 2, 3, 4]  # the exact reruns logged nothing twice


def fail_background_writes(monkeypatch, step, error):
  """Make the background write of checkpoint `step` fail with `error` (what a full disk
  or a read-only directory does), in Orbax's writer of the JSON 'data' item."""
  original = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def failing(self, item, directory):
    if f"{os.sep}{step}.orbax-checkpoint-tmp" in str(directory):
      raise error
    return await original(self, item, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", failing)


def test_a_failed_save_stops_the_run_naming_it_and_the_resume_logs_every_step_once(
    tmp_path, monkeypatch):
  config = tiny_mae_config(num_train_steps=8, checkpoint_every_steps=2,
                           image_summary_every_steps=0)
  with monkeypatch.context() as patch:
    fail_background_writes(patch, 4, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(checkpoint.SaveError) as failure:
      pretrain.run(config, str(tmp_path))
  found = re.fullmatch(
      r"Saving checkpoint 4 failed: OSError: \[Errno 28\] No space left on device\. Stopped "
      r"at step (\d); the newest complete checkpoint is step 2 in (\S+)\. Fix the cause .*",
      str(failure.value))
  assert found, failure.value
  stopped = int(found.group(1))
  assert 4 <= stopped <= 6 and found.group(2) == str(tmp_path / "checkpoints")
  assert checkpoint_steps(tmp_path) == [2]
  assert logged_steps(tmp_path) == list(range(1, stopped + 1))
  state = pretrain.run(config, str(tmp_path))  # the cause fixed, the same call
  assert int(state.step) == 8 and checkpoint_steps(tmp_path) == [4, 6, 8]
  assert logged_steps(tmp_path) == list(range(1, 9))  # none repeated, none dropped


def test_the_saver_names_a_save_that_failed_in_the_background(tmp_path, monkeypatch):
  fail_background_writes(monkeypatch, 2, PermissionError(errno.EACCES, "Permission denied"))
  saver = checkpoint.Saver(checkpoint.create_manager(str(tmp_path), tiny_mae_config()))
  saver.save(1, {"w": np.ones(4, np.float32)}, {"next_element": [16]})
  saver.save(2, {"w": np.ones(4, np.float32)}, {"next_element": [32]})
  with pytest.raises(checkpoint.SaveError, match=re.escape(
      "Saving checkpoint 2 failed: PermissionError: [Errno 13] Permission denied. Stopped at "
      f"step 3; the newest complete checkpoint is step 1 in {tmp_path / 'checkpoints'}.")):
    for _ in range(1000):  # a step or so later: once the background write has ended
      saver.check(3)
      time.sleep(0.01)
  saver.close()


def test_a_gs_workdir_is_read_and_written_through_epath(tmp_path, monkeypatch):
  """A gs:// workdir keeps its URL (no local abspath) and our own files (config.json,
  metrics, the checkpoint listing) go through etils.epath, the layer Orbax uses; here
  epath's gs:// backend is redirected to tmp_path, as there is no bucket offline."""
  from etils.epath import gpath
  from etils.epath import testing as epath_testing
  # With TensorFlow installed epath picks its gfile backend past the mock: turn that off.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  from mim_jax.evaluation import pretrained
  local = lambda path: str(path).replace("gs://bucket", str(tmp_path))
  redirect = lambda fn, path, *args, **kwargs: fn(local(path), *args, **kwargs)
  two_paths = lambda fn, src, dst, *args, **kwargs: fn(local(src), local(dst), *args, **kwargs)
  fns = {name: redirect for name in ("exists", "glob", "isdir", "listdir", "makedirs",
                                     "mkdir", "open", "remove", "rmtree", "stat", "walk")}
  fns.update(copy=two_paths, rename=two_paths, replace=two_paths)
  assert str(checkpoint.workdir_path("gs://bucket/run")) == "gs://bucket/run"
  assert str(checkpoint.workdir_path("run")) == os.path.join(os.getcwd(), "run")
  config = tiny_mae_config()
  with epath_testing.mock_epath(**fns):
    checkpoint.write_text("gs://bucket/run", "config.json", config.to_json_best_effort())
    read = pretrained.read_pretrain_config("gs://bucket/run")
    assert read.to_json_best_effort() == config.to_json_best_effort()
    assert pretrained.checkpoint_steps("gs://bucket/run") == []
    for name in ("2", "4", "6.orbax-checkpoint-tmp-1"):
      (tmp_path / "run" / "checkpoints" / name).mkdir(parents=True)
    assert pretrained.checkpoint_steps("gs://bucket/run") == [2, 4]
    with pytest.raises(FileNotFoundError, match="gs://bucket/none"):
      pretrained.read_pretrain_config("gs://bucket/none")
  assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 16


def test_only_the_saving_manager_is_a_cross_process_barrier(tmp_path, monkeypatch):
  """Opening Orbax's manager runs barriers (collectives every process must reach in the
  same order). The trainer's resume check opens one only when workdir/checkpoints exists,
  which process 0 may have just created: with 2 processes that extra barrier hung 3 of 6
  runs of the multi-process tests. Readers therefore open it without any."""
  from orbax.checkpoint._src.multihost import multihost  # pylint: disable=import-outside-toplevel
  barriers = []
  monkeypatch.setattr(multihost, "sync_global_processes",
                      lambda name, *args, **kwargs: barriers.append(name))
  config = tiny_mae_config()
  saving = checkpoint.create_manager(str(tmp_path), config)
  assert barriers  # the check can fail: the saving manager's opening has barriers
  checkpoint.save(saving, 2, {"w": np.ones(3)}, {"next_element": [0]})
  saving.wait_until_finished()
  saving.close()
  barriers.clear()
  reader = checkpoint.open_for_reading(str(tmp_path))
  assert reader.all_steps() == [2]
  reader.close()
  checkpoint.open_for_reading(str(tmp_path / "elsewhere")).close()
  assert barriers == [] and not (tmp_path / "elsewhere").exists()


def test_an_error_is_one_line_with_its_cause_in_under_200_characters():
  """What a damaged checkpoint's warning and a SaveError quote: TensorStore's JSON specs
  dropped, and of its chain of contexts the last ones, where the OS error is."""
  spec = "{" + ",".join(f'\\"key{i}\\":{{}}' for i in range(60)) + "}"  # ~1,000 characters
  message = (
      'OUT_OF_RANGE: Error opening "cast" driver: Error opening "zarr" driver: Error reading '
      '"step/.zarray" in OCDBT database at local file "/w/checkpoints/4/state/": Error reading '
      'Byte range [0, 110164) of local file "/w/checkpoints/4/state/d/fda40b1e": Requested '
      f"byte range [0, 110164) is not valid for value of size 7 [tensorstore_spec='{spec}'] "
      f"[tensorstore_spec[1]='{spec}']")
  line = checkpoint.one_line(ValueError(message))
  assert line == ('ValueError: ...: Error reading Byte range [0, 110164) of local file '
                  '"/w/checkpoints/4/state/d/fda40b1e": Requested byte range [0, 110164) is '
                  'not valid for value of size 7')
  assert len(line) - len("ValueError: ") < 200
  assert checkpoint.one_line(OSError(28, "No space left on device")) == (
      "OSError: [Errno 28] No space left on device")


def test_one_process_writes_replicated_arrays_whole_without_compiling(tmp_path):
  """Orbax's replica-parallel saving would slice every replicated array on each of the 8
  devices, a compiled slice per array and device; in one process each array is written
  whole (checkpoint._write_arrays_whole_in_one_process), and restores as it was."""
  mesh = jax.sharding.Mesh(jax.devices(), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {f"w{i}": jax.device_put(np.arange(8 * (i + 1), dtype=np.float32).reshape(8, -1),
                                   replicated) for i in range(3)}
  compiled = []

  def listener(event, seconds, **kwargs):
    del seconds, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    manager = checkpoint.create_manager(str(tmp_path), tiny_mae_config())
    checkpoint.save(manager, 1, state, {"next_element": [0]})
    manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == []
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored, data_state = checkpoint.restore_latest(manager, abstract)
  jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(state))
  assert data_state == {"next_element": [0]}
