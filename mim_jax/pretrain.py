"""Pretraining: the method `config.method.name` names, built for the run's length, trained
by the generic trainer (mim_jax/training/) with the evaluators `config.evals` lists."""
from typing import Optional, Sequence

import jax
import ml_collections

from mim_jax import methods
from mim_jax.evaluation import protocols
from mim_jax.training import config as train_config
from mim_jax.training.loop import train_and_evaluate
from mim_jax.training.state import TrainState


def run(config: ml_collections.ConfigDict, workdir: str,
        stop_after_step: Optional[int] = None,
        devices: Optional[Sequence[jax.Device]] = None) -> TrainState:
  """Pretrain under `workdir` (resuming from its checkpoints); see
  `training.loop.train_and_evaluate` for `stop_after_step` and `devices` (e.g.
  `jax.devices()[:1]`: one of a host's devices). Config errors of the method and the
  evaluators are raised before anything is compiled or written."""
  schedule = train_config.schedule(config)
  method = methods.create(config, total_steps=schedule.total_steps)
  evaluations = protocols.during_training(config, method)
  return train_and_evaluate(config, workdir, method, schedule, stop_after_step,
                            evaluations=evaluations, devices=devices)
