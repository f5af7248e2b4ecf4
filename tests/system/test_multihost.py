"""Multi-process runs: 2 processes × 4 CPU devices (gloo) train like 1 process × 8 devices;
their checkpoints restore in one process; SIGTERM to one process stops all. How
mim_jax.distributed reads the layout: tests/test_distributed.py."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, checkpoint_steps, scalar_series, tiny_mae_config
from mim_jax import pretrain
from mim_jax.evaluation import pretrained

STEPS = 4
# configs/mae.py:vit_base,shrink (batch 16, logs every step), STEPS steps, checkpoints every 2,
# no image summaries, and Adam's eps raised (below)
TINY = {"num_train_steps": STEPS, "checkpoint_every_steps": 2, "image_summary_every_steps": 0,
        "optimizer.eps": 1e-6}
# One process sums the 8 devices' gradients in its own all-reduce, two processes over
# gloo: the same sums in another order, and Adam magnifies the difference where a
# gradient is near its epsilon. The attention key bias has an exactly-zero gradient
# (softmax is shift invariant) whose float noise, with eps 1e-8, became Adam steps that
# differed by 5.2e-7 in one CI run; eps 1e-6 (as in tests/conftest.py's sharded-step
# helper) keeps that noise out. Measured on the 2-core CI CPU before: identical losses,
# other parameters within 7.5e-9 after 4 steps, within 9.9e-8 when steps 3-4 of the
# 2-process run are redone in one process. One Adam step moves a parameter by up to
# lr = 3.75e-5 here, so 5e-7 (1/75 of a step) still catches a wrong batch, step or lr.
LOSS_RTOL, PARAM_ATOL = 1e-6, 5e-7


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def tiny_config():
  return tiny_mae_config(**TINY)


def start_processes(workdir, overrides=TINY, count=2):
  """main.py as `count` jax.distributed processes × 4 CPU devices on localhost (each
  reads its share of every global batch). Returns [(process, log path)]."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  started = []
  for index in range(count):
    cmd = [sys.executable, "-m", "mim_jax.main", "--config=configs/mae.py:vit_base,shrink",
           f"--workdir={workdir}", f"--coordinator_address=localhost:{port}",
           f"--num_processes={count}", f"--process_id={index}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    log_path = workdir / f"log{index}.txt"
    with open(log_path, "w") as log:
      started.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log_path))
  return started


def wait_for(started, timeout=300):
  deadline = time.time() + timeout
  try:
    for proc, _ in started:
      proc.wait(timeout=max(deadline - time.time(), 1))
  finally:
    for proc, _ in started:
      if proc.poll() is None:
        proc.kill()
  texts = [log_path.read_text() for _, log_path in started]
  for (proc, _), text in zip(started, texts):
    assert proc.returncode == 0, text[-3000:]
  return texts


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(workdir of the 2-process run, workdir of the same run in this 1-process, 8-device
  pytest process, trained while the two processes run)."""
  two, one = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
  started = start_processes(two)
  try:
    assert jax.process_count() == 1 and jax.device_count() == 8
    pretrain.run(tiny_config(), str(one))
  finally:
    texts = wait_for(started)
  assert "Process 1 of 2: 4 local devices of 8." in texts[1]
  return two, one


def params_of(workdir, step=None):
  return jax.device_get(pretrained.restore_state(str(workdir), step)[1].params)


def assert_params_close(got, want):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=0, atol=PARAM_ATOL, err_msg=jax.tree_util.keystr(path))


def test_two_processes_train_like_one_process_with_eight_devices(runs):
  two, one = runs
  two_losses = scalar_series(str(two), "loss", with_steps=True)
  one_losses = scalar_series(str(one), "loss", with_steps=True)
  assert [s for s, _ in two_losses] == [s for s, _ in one_losses] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([v for _, v in two_losses], [v for _, v in one_losses],
                             rtol=LOSS_RTOL)
  assert len({v for _, v in one_losses}) == STEPS  # every step saw a new batch
  # Each process read 8 of the 16 examples of each step; the checkpoint records both.
  data_item = json.loads((two / "checkpoints" / str(STEPS) / "data" / "metadata").read_text())
  assert data_item["next_element"] == [STEPS * 8, STEPS * 8]
  # The 2-process checkpoint restores in this single process.
  assert_params_close(params_of(two), params_of(one))


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
  two, one = runs
  shutil.copy(two / "config.json", tmp_path / "config.json")
  shutil.copytree(two / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
  state = pretrain.run(tiny_config(), str(tmp_path))
  assert int(state.step) == STEPS
  resumed = scalar_series(str(tmp_path), "loss", with_steps=True)
  want = dict(scalar_series(str(one), "loss", with_steps=True))
  assert [s for s, _ in resumed] == [3, 4]
  np.testing.assert_allclose([v for _, v in resumed], [want[3], want[4]], rtol=LOSS_RTOL)
  assert_params_close(jax.device_get(state.params), params_of(one))


@pytest.mark.parametrize("count", [2, 1])
def test_sigterm_to_one_process_stops_all_at_the_same_step_with_a_checkpoint(tmp_path, count):
  """The preempted host gets SIGTERM (as a Cloud TPU VM or SLURM would send it); JAX's
  preemption sync point, which also carries the Cloud TPU maintenance notice, makes every
  process save step N and exit cleanly, and the rerun continues at N + 1. count=1 is a
  single-host TPU VM: one process, jax.distributed initialised."""
  overrides = dict(TINY, num_train_steps=400, checkpoint_every_steps=1000)
  started = start_processes(tmp_path, overrides, count)
  (victim, victim_log) = started[-1]
  deadline = time.time() + 240
  while not re.search(r"\] \[([3-9]|\d\d+)\] .*loss=", victim_log.read_text()):
    assert time.time() < deadline and victim.poll() is None, victim_log.read_text()[-3000:]
    time.sleep(0.2)
  victim.send_signal(signal.SIGTERM)
  texts = wait_for(started, timeout=120)
  stopped = checkpoint_steps(tmp_path)
  assert len(stopped) == 1 and 3 <= stopped[0] < 400, stopped
  for text in texts:
    assert f"Reached preemption sync point, step={stopped[0]}" in text
    assert f"Stopped at step {stopped[0]};" in text
  config = tiny_mae_config(**dict(overrides, num_train_steps=stopped[0] + 2))
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == stopped[0] + 2
  logged = [s for s, _ in scalar_series(str(tmp_path), "loss", with_steps=True)]
  assert logged == list(range(1, stopped[0] + 3))  # no step twice, none left out
