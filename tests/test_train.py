"""The trainer end to end: checkpoints, TensorBoard events, exact resume, config errors."""
import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, tiny_mae_config
from mim_jax import train


def event_tags(workdir):
  tags = set()
  for path in glob.glob(os.path.join(workdir, "**", "events.out.tfevents.*"), recursive=True):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def checkpoint_steps(workdir):
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def test_pretraining_writes_checkpoints_events_and_learns(tmp_path):
  config = tiny_mae_config(num_train_steps=6, keep_checkpoints=2)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  assert checkpoint_steps(tmp_path) == [4, 6]  # every 2 steps, last 2 kept
  tags = event_tags(str(tmp_path))
  for tag in ("loss", "lr", "grad_norm", "images_per_sec", "step_time", "mae_loss"):
    assert tag in tags, tags
  assert any(t.startswith("reconstruction") for t in tags), tags
  assert (tmp_path / "config.json").exists()


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
  config = tiny_mae_config(num_train_steps=6, checkpoint_every_steps=3)
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  stopped = train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_step=3)
  assert int(stopped.step) == 3
  assert checkpoint_steps(tmp_path / "resumed") == [3]
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert int(resumed.step) == 6
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               (full.params, full.opt_state), (resumed.params, resumed.opt_state))
  # and the stop changed something: params at step 3 differ from those at step 6
  assert not np.array_equal(np.asarray(stopped.params["encoder"]["norm"]["scale"]),
                            np.asarray(resumed.params["encoder"]["norm"]["scale"]))


@pytest.mark.parametrize("overrides,message", [
    (dict(batch_size=12), "divisible"),
    (dict(grad_accum_steps=3), "grad_accum_steps"),
    (dict(batch_size=32, grad_accum_steps=8), "micro-batch"),
])
def test_bad_batch_config_fails_before_compiling(tmp_path, overrides, message):
  config = tiny_mae_config(**overrides)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_bad_model_config_messages(tmp_path):
  config = tiny_mae_config()
  config.model.patch_size = 5
  with pytest.raises(ValueError, match="patch_size"):
    train.validate_config(config, 8, 1)
  config = tiny_mae_config()
  config.method.mask_ratio = 1.0
  with pytest.raises(ValueError, match="mask_ratio"):
    train.validate_config(config, 8, 1)
  config = tiny_mae_config()
  config.method.name = "beit"
  with pytest.raises(ValueError, match="method.name"):
    train.validate_config(config, 8, 1)


def test_main_runs_the_quickstart_config_from_the_command_line(tmp_path):
  cmd = [sys.executable, "-m", "mim_jax.main", "--config=configs/quickstart.py",
         f"--workdir={tmp_path}", "--config.num_train_steps=2", "--config.model.depth=1",
         "--config.batch_size=8", "--config.data.synthetic_train_size=64",
         "--config.checkpoint_every_steps=2", "--config.log_every_steps=1"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert checkpoint_steps(tmp_path) == [2]
  assert "loss" in event_tags(str(tmp_path))
