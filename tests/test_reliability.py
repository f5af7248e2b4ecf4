"""Failure behaviour: signals, kills, damaged checkpoints, non-finite steps, bad configs."""
import json
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


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  config = tiny_mae_config(num_train_steps=4, checkpoint_every_steps=2)
  pretrain.run(config, str(tmp_path))
  _, at_2 = pretrained.restore_state(str(tmp_path), step=2)
  for root, _, files in os.walk(tmp_path / "checkpoints" / "4" / "state"):
    for name in files:  # damage every array and metadata file of step 4
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  _, restored = pretrained.restore_state(str(tmp_path))
  assert int(restored.step) == 2
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               at_2.params, restored.params)


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


def test_too_many_non_finite_steps_in_a_row_stop_the_run_naming_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "nan_mae", NaNAtSteps)
  config = tiny_mae_config(num_train_steps=8, checkpoint_every_steps=2, max_nonfinite_steps=2)
  config.method.name = "nan_mae"
  config.method.nan_steps = (2, 3, 4, 5)  # 0-based step indices: train steps 3..6
  with pytest.raises(FloatingPointError,
                     match=r"2 consecutive steps \(3\.\.4\).*Last good checkpoint: step 2"):
    pretrain.run(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == [2]  # the check runs before step 4 would be saved


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
])
def test_config_errors_say_what_to_change(tmp_path, field, value, message):
  config = tiny_mae_config()
  if field == "data.tfds_name":
    config.data.source = "tfds"
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=re.escape(message)):
    pretrain.run(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_missing_data_dir_and_missing_path_are_named(tmp_path):
  config = tiny_mae_config()
  config.data.update(source="tfds", tfds_name="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="config.data.data_dir"):
    pretrain.run(config, str(tmp_path / "run"))
  config = tiny_mae_config()
  config.data.source = "npz"
  with pytest.raises(ValueError, match="config.data.path"):
    pretrain.run(config, str(tmp_path / "run"))


def test_reading_a_workdir_without_checkpoints_says_so(tmp_path):
  config = tiny_mae_config()
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="No checkpoint under"):
    pretrained.restore_state(str(tmp_path))


def plant_image_folder(root, good_per_class=3):
  """root/train/<class>/ with good JPEG/PNG files plus a truncated JPEG, a truncated
  PNG, a text file named .jpg and a README that is not an image at all."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for label, name in enumerate(("cat", "dog")):
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for i in range(good_per_class):
      pixels = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
  good = (root / "train" / "cat" / "1.jpg").read_bytes()
  (root / "train" / "cat" / "truncated.jpg").write_bytes(good[:len(good) // 3])
  png = (root / "train" / "dog" / "0.png").read_bytes()
  (root / "train" / "dog" / "truncated.png").write_bytes(png[:len(png) // 2])
  (root / "train" / "dog" / "not_an_image.jpg").write_text("hello")
  (root / "train" / "dog" / "README.txt").write_text("not listed: not an image suffix")
  return 3  # unreadable listed files


def test_unreadable_images_are_skipped_and_counted(tmp_path):
  from mim_jax import data
  bad = plant_image_folder(tmp_path / "images")
  config = tiny_mae_config()
  config.data.update(source="image_folder", path=str(tmp_path / "images"), image_size=16)
  assert data.num_examples(config, "train") == 6 + bad
  iterator = data.create_train_iterator(config, global_batch_size=2, process_index=0,
                                        process_count=1)
  batches = [next(iterator) for _ in range(9)]  # 18 good images: 3 epochs of 9 files
  elements = np.concatenate([b["element"] for b in batches])
  epochs = elements // (6 + bad)
  assert [int((epochs == e).sum()) for e in range(3)] == [6, 6, 6]  # the 3 bad ones skipped
  assert all(np.isfinite(b["image"]).all() and set(b["label"]) <= {0, 1} for b in batches)
  config.update(batch_size=8, num_train_steps=3, checkpoint_every_steps=3)
  pretrain.run(config, str(tmp_path / "run"))
  skipped = scalar_series(str(tmp_path / "run"), "skipped_images")
  assert skipped[-1] >= bad and skipped == sorted(skipped)


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
