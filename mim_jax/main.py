"""Entry point: python -m mim_jax.main --config=configs/<name>.py[:arg] --workdir=DIR
[--config.field=value ...] [--coordinator_address=host:port --num_processes=N
--process_id=I] (multi-process flags: mim_jax/distributed.py) [--host_memory=auto|keep|system]
(mim_jax/host.py) [--verbose].

A mistake a user can fix is one line without a traceback (`--verbose` or
MIM_JAX_TRACEBACK=1 adds it): in the config (the file, an override, a field's value: exit
status 2), or around the run (data or workdir files, a workdir in use, a failed save,
non-finite steps: 1). Ctrl-C exits with status 130: at once outside the train loop
(start-up, compilation before the loop, evaluation), after the step and its checkpoint
inside it (mim_jax/preemption.py).
"""
import os
import signal
import sys

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT)


def _interrupted(signum, frame):
  """SIGINT outside the train loop: one line, exit 130. Nothing half-written is left to
  read: an interrupted checkpoint save stays a temporary directory that is never
  restored."""
  del signum, frame
  sys.stderr.write("Interrupted (Ctrl-C): stopped before or after training, where nothing is "
                   "saved; run the same command again to start or resume.\n")
  sys.stderr.flush()
  os._exit(INTERRUPTED)  # pylint: disable=protected-access  (no traceback, nothing to wait for)


if __name__ == "__main__":
  signal.signal(signal.SIGINT, _interrupted)  # before the slow imports below

# pylint: disable=wrong-import-position
import errno  # noqa: E402
import re  # noqa: E402
import traceback  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mim_jax import checkpoint, distributed, host, lock, pretrain  # noqa: E402
from mim_jax.evaluation import protocols  # noqa: E402
from mim_jax.evaluation import run as evaluation_run  # noqa: E402
from mim_jax.training import loop  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
flags.DEFINE_bool("verbose", False, "Print an error's traceback too (also MIM_JAX_TRACEBACK=1).")
flags.mark_flags_as_required(["config", "workdir"])

# Mistakes in the config (exit status 2) and around the run (1) a user can fix: one line.
CONFIG_ERRORS = (ValueError, KeyError)
RUN_ERRORS = (checkpoint.SaveError, loop.NonFiniteError, lock.WorkdirInUse, OSError)
USAGE = 2


def lines_of(text) -> list:
  """The non-empty lines of `str(text)`, whitespace collapsed."""
  return [line for line in (" ".join(raw.split()) for raw in str(text).splitlines()) if line]


def one_line(text) -> str:
  """`text`'s non-empty lines joined with '. ', ending with one '.'."""
  return ". ".join(line.rstrip(".") for line in lines_of(text)) + "."


def usage_exit(message: str):
  """`message` on stderr, then exit with the usage status (2)."""
  sys.stderr.write(message + "\n")
  sys.exit(USAGE)


def parse_flags(argv):
  """absl's flag parsing; a bad flag, a config file that is missing or fails to load, or
  a bad --config.field override (a misspelled or unknown field, a value of the wrong
  type) exits with one line (status 2) instead of a traceback."""
  config_arg = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  try:
    argv = FLAGS(argv)
  except flags.Error as e:
    lines = lines_of(e)
    if "Traceback (most recent call last):" in lines:  # the config file's code raised
      usage_exit(f"FATAL The config file of {config_arg} failed: {lines[-1]}")
    usage_exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help "
               "on flags.")
  except Exception as e:  # pylint: disable=broad-except  (the config file's code raised)
    while len(e.args) == 1 and isinstance(e.args[0], BaseException):
      e = e.args[0]  # ml_collections wraps its KeyError in an AttributeError
    message = ". ".join(lines_of(e.args[0] if len(e.args) == 1 else e))
    if not overrides or not isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
      usage_exit(f"FATAL The config file of {config_arg} failed: {type(e).__name__}: "
                 f"{message}")
    field = re.match(r"'([^']+)'", message)
    if isinstance(e, KeyError) and field:
      message = f"no such field {message}"
    named = [a for a in overrides if field and field.group(1) in a.split("=")[0]]
    usage_exit(f"FATAL Bad config override {' '.join(named or overrides)}: {message}")
  try:
    FLAGS.config.keys()  # config_flags defers a failure to load the file to the first read
  except OSError as e:  # its report ends with why: no such file, a syntax error, ...
    cause = lines_of(e)[-1]
    usage_exit(f"FATAL The config file of {config_arg} cannot be loaded: {cause}. Give "
               "a config file's path relative to the working directory (e.g. "
               "--config=configs/mae.py:vit_base).")
  return argv


def report(error: BaseException) -> int:
  """Log `error` as one line (with its traceback under --verbose or MIM_JAX_TRACEBACK=1)
  and return the exit status: 2 for a config mistake, 1 otherwise."""
  text = one_line(error)
  if isinstance(error, (OSError, KeyError)):
    text = f"{type(error).__name__}: {text}"
  if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    text += " The --workdir must be writable and the data files readable by this process."
  if FLAGS.verbose or os.environ.get("MIM_JAX_TRACEBACK") == "1":
    logging.error("%s", "".join(traceback.format_exception(error)).rstrip())
  logging.error("%s", text)
  return USAGE if isinstance(error, CONFIG_ERRORS) else 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host.configure_from_flags()  # before JAX starts its threads
  distributed.initialize_from_flags()  # before anything touches the devices
  quiet = checkpoint.quiet_orbax_logs(logging.get_absl_handler())
  try:
    if protocols.is_evaluation(FLAGS.config):  # configs/eval/: a protocol of the registry
      evaluation_run.evaluate(FLAGS.config, FLAGS.workdir)
    else:
      pretrain.run(FLAGS.config, FLAGS.workdir)
  except CONFIG_ERRORS + RUN_ERRORS as e:
    quiet.save_failed = isinstance(e, checkpoint.SaveError)
    return report(e)
  except KeyboardInterrupt:  # Ctrl-C in the train loop: the step ended with a checkpoint
    return INTERRUPTED
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
