"""Entry point: python -m mim_jax.main --config=configs/<name>.py[:arg] --workdir=DIR
[--config.field=value ...] [--coordinator_address=host:port --num_processes=N
--process_id=I] (multi-process flags: mim_jax/distributed.py)."""
import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from mim_jax import distributed, pretrain
from mim_jax.evaluation import run as evaluation_run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])


class QuietOrbaxInfo(py_logging.Filter):
  """Orbax logs dozens of INFO lines per checkpoint; keep its warnings and errors."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize_from_flags()  # before anything touches the devices
  logging.get_absl_handler().addFilter(QuietOrbaxInfo())
  logging.info("Config:\n%s", FLAGS.config)
  if "protocol" in FLAGS.config:  # an evaluation config (configs/eval/)
    evaluation_run.evaluate(FLAGS.config, FLAGS.workdir)
  else:
    pretrain.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
