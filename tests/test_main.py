"""mim_jax/main.py: a misspelled config field, and the log filter that keeps Orbax's warnings
but drops its background tracebacks."""
import logging
import sys

import pytest

from conftest import REPO


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
  main.ignore_closed_event_loops(unraisable(RuntimeError("Event loop is closed")), seen.append)
  main.ignore_closed_event_loops(unraisable(RuntimeError("other")), seen.append)
  assert [str(u.exc_value) for u in seen] == ["other"]
