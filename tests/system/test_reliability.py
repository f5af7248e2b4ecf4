"""Failure behaviour of `python -m mim_jax.main` as a process: SIGTERM, SIGKILL at a random
step, a save killed mid-write, a full disk. The in-process failure tests are in
tests/test_checkpoint.py, test_preemption.py and test_train.py."""
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

from conftest import REPO, checkpoint_steps, scalar_series, tiny_mae_config
from mim_jax import checkpoint, pretrain

# configs/mae.py:vit_base,shrink (logs every step) without image summaries: no test reads them
NO_IMAGES = {"image_summary_every_steps": 0}


def start_main(workdir, overrides):
  """main.py in a subprocess, 8 fake devices like this process; stderr is a pipe."""
  cmd = [sys.executable, "-m", "mim_jax.main", "--config=configs/mae.py:vit_base,shrink",
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
  overrides = dict(NO_IMAGES, num_train_steps=400, checkpoint_every_steps=1000)
  proc = start_main(tmp_path, overrides)
  wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  stopped = checkpoint_steps(tmp_path)
  assert len(stopped) == 1 and 3 <= stopped[0] < 400, stopped
  assert f"Stopped at step {stopped[0]}" in err
  config = tiny_mae_config(**dict(overrides, num_train_steps=stopped[0] + 3))
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == stopped[0] + 3
  logged = scalar_series(str(tmp_path), "loss", with_steps=True)
  assert [s for s, _ in logged] == list(range(1, stopped[0] + 4))  # no step twice


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tmp_path):
  overrides = dict(NO_IMAGES, num_train_steps=30, checkpoint_every_steps=2)
  config = tiny_mae_config(**overrides)
  reference = pretrain.run(tiny_mae_config(**dict(overrides, checkpoint_every_steps=1000)),
                           str(tmp_path / "reference"))  # saves only its last step
  kill_at = random.Random().randint(3, 20)
  proc = start_main(tmp_path / "killed", overrides)
  wait_for_step(proc, kill_at)
  wait_for_a_finished_checkpoint(tmp_path / "killed")
  proc.kill()
  proc.wait()
  assert checkpoint_steps(tmp_path / "killed")[-1] < 30
  resumed = pretrain.run(config, str(tmp_path / "killed"))
  assert int(resumed.step) == 30
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
  proc = start_main(small_disk / "run", dict(NO_IMAGES, num_train_steps=6,
                                             checkpoint_every_steps=2))
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
