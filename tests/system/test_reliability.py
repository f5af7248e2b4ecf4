"""Failure behaviour: signals, kills, damaged checkpoints, failed saves, non-finite steps,
config changes on resume, bad configs."""
import errno
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, checkpoint_steps, config_file, scalar_series, tiny_mae_config
from mim_jax import checkpoint, methods, optim, preemption, pretrain, sharding, train
from mim_jax.evaluation import pretrained
from mim_jax.methods import mae

TINY = {"model.width": 32, "model.depth": 1, "model.num_heads": 4, "model.decoder_width": 16,
        "model.decoder_depth": 1, "model.decoder_num_heads": 2, "data.image_size": 16,
        "data.synthetic_train_size": 256, "batch_size": 16, "log_every_steps": 1,
        "image_summary_every_steps": 0, "warmup_steps": 2}


def start_main(workdir, overrides):
  """main.py in a subprocess, 8 fake devices like this process; stderr is a pipe."""
  cmd = [sys.executable, "-m", "mim_jax.main", "--config=configs/quickstart.py",
         f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, step, timeout=240):
  """Read the log until the metrics of `step` (or a later one) are written."""
  deadline = time.time() + timeout
  lines = []
  while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
      break
    lines.append(line)
    found = re.search(r"\] \[(\d+)\] .*loss=", line)
    if found and int(found.group(1)) >= step:
      return int(found.group(1))
  proc.kill()
  raise AssertionError("main.py never reached step %d:\n%s" % (step, "".join(lines[-30:])))


def wait_for_a_finished_checkpoint(workdir, timeout=120):
  """Async saves lag the logged step on a loaded machine; kill only once one has landed."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if checkpoint_steps(workdir):
      return
    time.sleep(0.05)
  raise AssertionError("no checkpoint finished in %s within %d s" % (workdir, timeout))


def test_sigterm_saves_a_checkpoint_and_the_rerun_continues_from_it(tmp_path):
  overrides = dict(TINY, num_train_steps=400, checkpoint_every_steps=1000)
  proc = start_main(tmp_path, overrides)
  wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  stopped = checkpoint_steps(tmp_path)
  assert len(stopped) == 1 and 3 <= stopped[0] < 400, stopped
  assert f"Stopped at step {stopped[0]}" in err
  config = config_file("quickstart.py", overrides=dict(overrides, num_train_steps=stopped[0] + 3))
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == stopped[0] + 3
  logged = scalar_series(str(tmp_path), "loss", with_steps=True)
  assert [s for s, _ in logged] == list(range(1, stopped[0] + 4))  # no step twice


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_watch_turns_a_signal_into_a_stop_and_restores_the_old_handler(sig):
  before = signal.getsignal(sig)
  with preemption.PreemptionWatch() as watch:
    assert not watch.should_stop(1)
    os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
    assert watch.should_stop(2)
  assert signal.getsignal(sig) is before


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tmp_path):
  overrides = dict(TINY, num_train_steps=60, checkpoint_every_steps=2)
  config = config_file("quickstart.py", overrides=overrides)
  reference = pretrain.run(config, str(tmp_path / "reference"))
  kill_at = random.Random().randint(3, 20)
  proc = start_main(tmp_path / "killed", overrides)
  wait_for_step(proc, kill_at)
  wait_for_a_finished_checkpoint(tmp_path / "killed")
  proc.kill()
  proc.wait()
  assert checkpoint_steps(tmp_path / "killed")[-1] < 60
  resumed = pretrain.run(config, str(tmp_path / "killed"))
  assert int(resumed.step) == 60
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(same, (reference.params, reference.opt_state, reference.rng),
               (resumed.params, resumed.opt_state, resumed.rng))


KILL_DURING_SAVE = """
import os, signal, sys
import numpy as np
from ml_collections import ConfigDict
from mim_jax import checkpoint
config = ConfigDict(dict(keep_checkpoints=3))
manager = checkpoint.create_manager(sys.argv[1], config)
checkpoint.save(manager, 1, {"w": np.ones(4, np.float32)}, {"next_element": [16]})
manager.wait_until_finished()
big = np.random.default_rng(0).normal(size=(64, 1024, 1024)).astype(np.float32)
checkpoint.save(manager, 2, {"w": big}, {"next_element": [32]})
os.kill(os.getpid(), signal.SIGKILL)  # while step 2 is still being written
"""


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint_restorable(tmp_path):
  proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  leftovers = os.listdir(tmp_path / "checkpoints")
  assert "1" in leftovers and "2" not in leftovers, leftovers  # step 2 never finished
  manager = checkpoint.create_manager(str(tmp_path), tiny_mae_config())
  state, data_state = checkpoint.restore_latest(
      manager, {"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
  np.testing.assert_array_equal(state["w"], np.ones(4))
  assert data_state == {"next_element": [16]}


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


@pytest.fixture
def small_disk(tmp_path):
  """A 256 kB tmpfs under tmp_path: room for config.json and the event file, not for a
  checkpoint (needs root; skipped where mounting is refused)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                           capture_output=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  yield disk
  subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_main_with_one_error_line_and_no_traceback(small_disk):
  """The real failure, through main.py: TensorStore's writes of checkpoint 2 fail."""
  proc = start_main(small_disk / "run", dict(TINY, num_train_steps=6, checkpoint_every_steps=2))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  errors = [line for line in err.splitlines() if "Saving checkpoint" in line]
  assert len(errors) == 1, err[-3000:]
  assert re.search(r"\] Saving checkpoint 2 failed: .*No space left on device.*\. Stopped at "
                   r"step [2-4]; there is no complete checkpoint in \S+/run/checkpoints\. Fix "
                   r"the cause \(free space, permissions\), then run the same command again; it "
                   r"starts from step 0\.$", errors[0]), errors[0]
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  assert checkpoint_steps(small_disk / "run") == []


class NaNAtSteps(mae.MAE):
  """MAE whose loss is NaN at the steps listed in config.method.nan_steps."""

  def loss(self, params, target_params, batch, masks, rng, step):
    loss, metrics = super().loss(params, target_params, batch, masks, rng, step)
    bad = jnp.isin(step, jnp.asarray(self.config.method.nan_steps))
    return jnp.where(bad, jnp.nan, loss), metrics


def test_a_non_finite_step_is_skipped_and_counted():
  config = tiny_mae_config()
  config.method.nan_steps = (1,)
  method = NaNAtSteps(config)
  mesh = sharding.create_mesh(config, jax.devices()[:1])
  lr_fn = optim.lr_schedule(1e-3, total_steps=10, warmup_steps=0)
  tx = optim.create_optimizer(config, lr_fn)
  images = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
  state, _ = train.create_train_state(method, tx, config, mesh, {"image": images})
  step = jax.jit(train.make_train_step(method, tx, lr_fn, config, 10, mesh))
  state1, _ = step(state, {"image": images})
  state2, metrics2 = step(state1, {"image": images})  # step index 1: NaN
  state3, metrics3 = step(state2, {"image": images})
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(same, (state1.params, state1.opt_state), (state2.params, state2.opt_state))
  assert int(state2.step) == 2
  assert (int(metrics2["skipped_steps"]), int(metrics2["nonfinite_streak"])) == (1, 1)
  assert (int(metrics3["skipped_steps"]), int(metrics3["nonfinite_streak"])) == (1, 0)
  assert np.isfinite(float(metrics3["loss"]))
  assert not np.array_equal(np.asarray(state3.params["encoder"]["norm"]["scale"]),
                            np.asarray(state2.params["encoder"]["norm"]["scale"]))


def test_too_many_non_finite_steps_stop_the_run_naming_the_checkpoint_before_them(
    tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "nan_mae", NaNAtSteps)
  config = tiny_mae_config(num_train_steps=8, checkpoint_every_steps=2, max_nonfinite_steps=3,
                           image_summary_every_steps=0)
  config.method.name = "nan_mae"
  config.method.nan_steps = (2, 3, 4, 5)  # 0-based step indices: train steps 3..6
  with pytest.raises(FloatingPointError, match=re.escape(
      "3 consecutive steps (3..5) had a non-finite loss or gradient and were skipped "
      "(config.max_nonfinite_steps=3). The newest checkpoint from before step 3 is step 2 in "
      f"{tmp_path / 'checkpoints'}: lower config.optimizer.base_lr (now 0.00015)")):
    pretrain.run(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == [2]  # step 4 fell inside the streak: not saved
  config.method.nan_steps = ()  # what lowering the lr does to a real divergence
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == 8 and int(state.skipped_steps) == 0
  assert checkpoint_steps(tmp_path) == [4, 6, 8]
  assert checkpoint.read_config_history(str(tmp_path)) == [
      {"step": 2, "changes": {"method.nan_steps": [[2, 3, 4, 5], []]}}]


def test_a_streak_from_the_first_step_says_no_checkpoint_exists_and_what_to_change(
    tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "nan_mae", NaNAtSteps)
  config = tiny_mae_config(num_train_steps=4, max_nonfinite_steps=2, image_summary_every_steps=0)
  config.method.name = "nan_mae"
  config.method.nan_steps = (0, 1, 2, 3)
  with pytest.raises(FloatingPointError, match=re.escape(
      "2 consecutive steps (1..2) had a non-finite loss or gradient and were skipped "
      "(config.max_nonfinite_steps=2). No checkpoint was written before step 1 (none is "
      "written while steps are non-finite): lower config.optimizer.base_lr (now 0.00015)")):
    pretrain.run(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == []


def test_resuming_with_a_config_that_changes_the_state_is_refused_before_any_write(tmp_path):
  config = tiny_mae_config(num_train_steps=2, image_summary_every_steps=0)
  pretrain.run(config, str(tmp_path))
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  deeper = tiny_mae_config(num_train_steps=4, image_summary_every_steps=0)
  deeper.model.depth = 3
  with pytest.raises(ValueError, match=re.escape(
      "Changed config fields: model.depth: 2 -> 3, num_train_steps: 2 -> 4. Resume with the "
      f"run's config ({tmp_path}/config.json, left unchanged)")):
    pretrain.run(deeper, str(tmp_path))
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
  longer = tiny_mae_config(num_train_steps=4, image_summary_every_steps=0, batch_size=32)
  longer.optimizer.base_lr = 3e-4
  state = pretrain.run(longer, str(tmp_path))
  assert int(state.step) == 4
  assert checkpoint.read_config(str(tmp_path)).optimizer.base_lr == 3e-4
  assert checkpoint.read_config_history(str(tmp_path)) == [{"step": 2, "changes": {
      "batch_size": [16, 32], "num_train_steps": [2, 4], "optimizer.base_lr": [1.5e-4, 3e-4]}}]


@pytest.mark.parametrize("field,value,message", [
    ("method.name", "beit", "Unknown config.method.name='beit'"),
    ("data.source", "parquet", "config.data.source"),
    ("data.tfds_name", "no_such_dataset", "config.data.tfds_name"),
    ("model.num_heads", 3, "num_heads"),
    ("model.patch_size", 5, "not divisible by config.model.patch_size=5"),
    ("method.mask_ratio", 0.0, "config.method.mask_ratio=0.0 must be in (0, 1)"),
    ("method.mask_ratio", 1.0, "config.method.mask_ratio=1.0 must be in (0, 1)"),
    ("batch_size", 12, "config.batch_size=12 (the global batch) is not divisible by the 8 "
                       "devices: set it to a multiple of 8 (e.g. 8 or 16)"),
    ("data.crop_scale", (0.2,), "config.data.crop_scale=(0.2,) must be a pair (low, high) "
                                "with 0 < low <= high, e.g. --config.data.crop_scale='(0.2, "
                                "1.0)'"),
    ("data.std", (0.2, 0.2, 0.0), "config.data.std=(0.2, 0.2, 0.0) must be 3 per-channel "
                                  "values > 0"),
])
def test_config_errors_say_what_to_change(tmp_path, field, value, message):
  config = tiny_mae_config()
  if field == "data.tfds_name":
    config.data.source = "tfds"
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=re.escape(message)):
    pretrain.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing written, not even the workdir


def test_a_misspelled_config_field_is_one_line_with_the_suggestion(tmp_path, monkeypatch):
  from mim_jax import main
  argv = ["main", f"--config={REPO}/configs/quickstart.py", f"--workdir={tmp_path}/run",
          "--config.seed=1", "--config.optimizer.base_lrr=1e-3"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  try:
    with pytest.raises(SystemExit) as exit_:
      main.parse_flags(argv)
  finally:
    main.FLAGS.unparse_flags()
  assert exit_.value.code == (
      "FATAL Bad config override --config.optimizer.base_lrr=1e-3: no such field 'base_lrr'. "
      'Did you mean "base_lr" instead of "base_lrr"?')
  assert not (tmp_path / "run").exists()


def test_main_keeps_orbax_warnings_but_drops_background_tracebacks():
  from mim_jax import main
  quiet = main.QuietOrbax()

  def record(name, path, level, msg="x", exc_info=None):
    return logging.LogRecord(name, level, path, 1, msg, (), exc_info)

  failure = (ValueError, ValueError("disk full"), None)
  orbax = "/site-packages/orbax/checkpoint/_src/x.py"
  assert not quiet.filter(record("absl", orbax, logging.INFO))
  assert quiet.filter(record("absl", orbax, logging.WARNING))
  assert not quiet.filter(record("absl", orbax, logging.ERROR, exc_info=failure))
  assert quiet.filter(record("absl", "/mim_jax/train.py", logging.ERROR, exc_info=failure))
  never = record("asyncio", "/asyncio/base_events.py", logging.ERROR,
                 "Future exception was never retrieved", failure)
  assert quiet.filter(never)
  quiet.save_failed = True  # set once the SaveError is reported
  assert not quiet.filter(never)
  seen = []
  unraisable = lambda error: type("U", (), {"exc_value": error})()
  main.ignore_closed_event_loops(unraisable(RuntimeError("Event loop is closed")), seen.append)
  main.ignore_closed_event_loops(unraisable(RuntimeError("other")), seen.append)
  assert [str(u.exc_value) for u in seen] == ["other"]


def test_unknown_model_size_is_named():
  from mim_jax import defaults
  with pytest.raises(ValueError, match=r"Unknown ViT size 'gigantic'.*base"):
    defaults.vit_model_config("gigantic")


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
