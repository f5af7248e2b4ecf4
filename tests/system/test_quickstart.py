"""configs/quickstart.py runs from the command line (`python -m mim_jax.main`)."""
import os
import subprocess
import sys

from conftest import REPO, checkpoint_steps, event_tags


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
