"""mim_jax/main.py: every mistake a user can fix is one line without a traceback and with
exit status 2 (the config) or 1 (around the run), before anything is written; Ctrl-C
before training exits 130; the log filter that keeps Orbax's warnings but drops its
background tracebacks."""
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import REPO, checkpoint_steps, tiny_mae_config
from mim_jax import checkpoint


def test_a_misspelled_config_field_is_one_line_with_the_suggestion(tmp_path, monkeypatch,
                                                                   capsys):
  from mim_jax import main
  argv = ["main", f"--config={REPO}/configs/quickstart.py", f"--workdir={tmp_path}/run",
          "--config.seed=1", "--config.optimizer.base_lrr=1e-3"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  try:
    with pytest.raises(SystemExit) as exit_:
      main.parse_flags(argv)
  finally:
    main.FLAGS.unparse_flags()
  assert exit_.value.code == 2
  assert capsys.readouterr().err == (
      "FATAL Bad config override --config.optimizer.base_lrr=1e-3: no such field 'base_lrr'. "
      'Did you mean "base_lr" instead of "base_lrr"?\n')
  assert not (tmp_path / "run").exists()


def test_main_keeps_orbax_warnings_but_drops_background_tracebacks():
  quiet = checkpoint.QuietOrbax()

  def record(name, path, level, msg="x", exc_info=None):
    return logging.LogRecord(name, level, path, 1, msg, (), exc_info)

  failure = (ValueError, ValueError("disk full"), None)
  orbax = "/site-packages/orbax/checkpoint/_src/x.py"
  assert not quiet.filter(record("absl", orbax, logging.INFO))
  assert quiet.filter(record("absl", orbax, logging.WARNING))
  assert not quiet.filter(record("absl", orbax, logging.ERROR, exc_info=failure))
  assert quiet.filter(record("absl", "/mim_jax/training/loop.py", logging.ERROR, exc_info=failure))
  never = record("asyncio", "/asyncio/base_events.py", logging.ERROR,
                 "Future exception was never retrieved", failure)
  assert quiet.filter(never)
  # the other writes of a failed save, raised in Orbax's code, even before it is reported
  try:
    exec(compile("raise ValueError('RESOURCE_EXHAUSTED')", "/orbax/serialization.py", "exec"))
  except ValueError as error:
    in_orbax = (ValueError, error, error.__traceback__)
  assert not quiet.filter(record("asyncio", "/asyncio/base_events.py", logging.ERROR,
                                 "Task exception was never retrieved", in_orbax))
  quiet.save_failed = True  # set once the SaveError is reported
  assert not quiet.filter(never)
  seen = []
  unraisable = lambda error: type("U", (), {"exc_value": error})()
  checkpoint.ignore_closed_event_loops(unraisable(RuntimeError("Event loop is closed")),
                                       seen.append)
  checkpoint.ignore_closed_event_loops(unraisable(RuntimeError("other")), seen.append)
  assert [str(u.exc_value) for u in seen] == ["other"]


def parse(argv, monkeypatch):
  """main.parse_flags(argv) as the program runs it; the flags are reset after."""
  from mim_jax import main
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  try:
    return main.parse_flags(argv)
  finally:
    main.FLAGS.unparse_flags()


@pytest.mark.parametrize("spec, message", [
    ("configs/nope.py", "cannot be loaded: [Errno 2] No such file or directory: "),
    ("configs/mae.py:tny", "failed: ValueError: Unknown config variant 'tny'; choose one of "),
])
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, monkeypatch, capsys, spec,
                                                      message):
  with pytest.raises(SystemExit) as exit_:
    parse(["main", f"--config={REPO / spec}", f"--workdir={tmp_path}/run"], monkeypatch)
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
  assert err.startswith(f"FATAL The config file of --config={REPO / spec} ") and message in err
  assert not (tmp_path / "run").exists()


def run_main(argv, monkeypatch, caplog):
  """main.main after parsing `argv`: (exit status, the ERROR lines logged)."""
  from mim_jax import main
  caplog.set_level(logging.INFO, logger="absl")
  monkeypatch.setattr(sys, "argv", argv)
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    status = main.main(argv[:1])
  errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
  return status, [r.getMessage() for r in errors]


def test_a_bad_field_value_or_data_file_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, caplog):
  config = f"--config={REPO / 'configs/mae.py'}:vit_base,shrink"
  status, errors = run_main(["main", config, f"--workdir={tmp_path}/a",
                             "--config.model.width=33"], monkeypatch, caplog)
  assert status == 2 and errors == [
      "config.model.width=33 must be divisible by 4 (sin-cos position embedding) and by "
      "config.model.num_heads=4."]
  assert not any("Config (written" in r.getMessage() for r in caplog.records)
  images = np.zeros((16, 8, 8, 3), np.float32)  # float pixels: the npz source takes uint8
  np.savez(tmp_path / "float.npz", x_train=images, y_train=np.zeros(16, int),
           x_test=images, y_test=np.zeros(16, int))
  caplog.clear()
  status, errors = run_main(["main", config, f"--workdir={tmp_path}/b",
                             "--config.data.source=npz",
                             f"--config.data.path={tmp_path / 'float.npz'}"], monkeypatch, caplog)
  assert status == 2 and len(errors) == 1 and "x_train is float32; the npz source needs" in (
      errors[0])
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
  # MIM_JAX_TRACEBACK=1 adds the traceback before the line
  monkeypatch.setenv("MIM_JAX_TRACEBACK", "1")
  caplog.clear()
  status, errors = run_main(["main", config, f"--workdir={tmp_path}/a",
                             "--config.model.width=33"], monkeypatch, caplog)
  assert status == 2 and errors[0].startswith("Traceback (most recent call last):")


def test_evaluating_a_run_without_checkpoints_is_one_line_with_status_1(
    tmp_path, monkeypatch, caplog):
  checkpoint.write_config(str(tmp_path / "run"), tiny_mae_config())
  status, errors = run_main(["main", f"--config={REPO / 'configs/eval/knn.py'}",
                             f"--config.pretrained={tmp_path / 'run'}",
                             f"--workdir={tmp_path}/eval"], monkeypatch, caplog)
  assert status == 1 and len(errors) == 1
  assert errors[0].startswith(f"FileNotFoundError: config.pretrained='{tmp_path / 'run'}' has "
                              "no checkpoints under checkpoints/")
  assert not (tmp_path / "eval").exists()


@pytest.fixture
def read_only_dir(tmp_path):
  """A read-only tmpfs under tmp_path (root's writes ignore file modes; skipped where
  mounting is refused)."""
  directory = tmp_path / "ro"
  directory.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                            str(directory)], capture_output=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  yield directory
  subprocess.run(["umount", "-l", str(directory)], check=False)


def test_a_workdir_that_cannot_be_written_is_one_line_with_status_1(read_only_dir, monkeypatch,
                                                                     caplog):
  status, errors = run_main(["main", f"--config={REPO / 'configs/mae.py'}:vit_base,shrink",
                             f"--workdir={read_only_dir / 'run'}"], monkeypatch, caplog)
  assert status == 1 and len(errors) == 1
  assert errors[0].startswith("OSError: [Errno 30] Read-only file system: ") and (
      "--workdir" in errors[0])


def test_ctrl_c_before_training_exits_130_without_a_traceback(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.Popen([sys.executable, "-m", "mim_jax.main",
                           "--config=configs/mae.py:vit_base,shrink", f"--workdir={tmp_path}/run"],
                          cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  time.sleep(2.0)  # importing jax and tensorflow, or later: any moment before the loop
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert "Interrupted (Ctrl-C)" in err and "Traceback" not in err, err[-2000:]
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_ctrl_c_in_the_train_loop_saves_the_step_then_exits_130(tmp_path, monkeypatch, caplog):
  from mim_jax import preemption

  class CtrlCAtStep2(preemption.PreemptionWatch):
    def should_stop(self, step):
      if step == 2:
        self.received = signal.SIGINT  # what the handler records on Ctrl-C
      return super().should_stop(step)

  monkeypatch.setattr(preemption, "PreemptionWatch", CtrlCAtStep2)
  status, errors = run_main(["main", f"--config={REPO / 'configs/mae.py'}:vit_base,shrink",
                             f"--workdir={tmp_path}", "--config.image_summary_every_steps=0"],
                            monkeypatch, caplog)
  assert status == 130 and errors == []
  assert checkpoint_steps(tmp_path) == [2]
  assert any(r.getMessage().startswith("Stopped at step 2; checkpoint saved")
             for r in caplog.records)
