"""Entry point: python -m mim_jax.main --config=configs/<name>.py[:arg] --workdir=DIR
[--config.field=value ...] [--coordinator_address=host:port --num_processes=N
--process_id=I] (multi-process flags: mim_jax/distributed.py) [--host_memory=auto|keep|system]
(mim_jax/host.py)."""
import logging as py_logging
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from mim_jax import checkpoint, distributed, host, pretrain, train
from mim_jax.evaluation import run as evaluation_run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors that end a run with a complete message: logged as one line, exit status 1.
RUN_ERRORS = (checkpoint.SaveError, train.NonFiniteError)


class QuietOrbax(py_logging.Filter):
  """Orbax logs dozens of INFO lines per checkpoint; keep its warnings and errors, but
  drop the tracebacks of failed writes on its background threads: Orbax re-raises the
  failure when the save is waited for, and the trainer reports it then as one SaveError
  that carries the cause (mim_jax/checkpoint.py, Saver). asyncio's 'exception was never
  retrieved' for the save's other writes (one per array, the same cause) are dropped
  too: those raised in Orbax's code at any time (they can come just before the report),
  any once it is made (`save_failed`)."""

  save_failed = False

  def filter(self, record):
    if record.exc_info and "/orbax/" in record.pathname:
      return False
    if record.name == "asyncio" and "never retrieved" in record.msg and (
        self.save_failed or _raised_in_orbax(record.exc_info)):
      return False
    return "/orbax/" not in record.pathname or record.levelno >= py_logging.WARNING


def _raised_in_orbax(exc_info) -> bool:
  tb = exc_info[2] if exc_info else None
  return any("/orbax/" in frame.filename for frame in traceback.extract_tb(tb))


def ignore_closed_event_loops(unraisable, default=sys.unraisablehook):
  """After a failed write Orbax closes its asyncio loop while TensorStore still
  completes the other writes, each reporting 'Event loop is closed' as an unraisable
  exception (dozens of tracebacks); the failure itself is raised by the save."""
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return
  default(unraisable)


def parse_flags(argv):
  """absl's flag parsing; a bad --config.field override (a misspelled or unknown field,
  a value of the wrong type) exits with one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help "
             "on flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    while len(e.args) == 1 and isinstance(e.args[0], BaseException):
      e = e.args[0]  # ml_collections wraps its KeyError in an AttributeError
    lines = str(e.args[0] if len(e.args) == 1 else e).splitlines()
    message = ". ".join(" ".join(line.split()) for line in lines if line.strip())
    field = re.match(r"'([^']+)'", message)
    if isinstance(e, KeyError) and field:
      message = f"no such field {message}"
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    named = [a for a in overrides if field and field.group(1) in a.split("=")[0]]
    sys.exit(f"FATAL Bad config override {' '.join(named or overrides)}: {message}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host.configure_from_flags()  # before JAX starts its threads
  distributed.initialize_from_flags()  # before anything touches the devices
  quiet = QuietOrbax()
  logging.get_absl_handler().addFilter(quiet)
  sys.unraisablehook = ignore_closed_event_loops
  logging.info("Config:\n%s", FLAGS.config)
  try:
    if "protocol" in FLAGS.config:  # an evaluation config (configs/eval/)
      evaluation_run.evaluate(FLAGS.config, FLAGS.workdir)
    else:
      pretrain.run(FLAGS.config, FLAGS.workdir)
  except RUN_ERRORS as e:
    quiet.save_failed = isinstance(e, checkpoint.SaveError)
    logging.error("%s", e)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
