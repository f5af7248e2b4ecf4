"""Pretraining: the method `config.method.name` names, built for the run's length, trained
by the generic trainer (mim_jax/train.py) with the k-NN monitor of its encoder when
`config.knn_monitor.every_steps` > 0 (mim_jax/evaluation/monitor.py)."""
from typing import Optional

import ml_collections

from mim_jax import methods, train
from mim_jax.evaluation import monitor
from mim_jax.state import TrainState


def run(config: ml_collections.ConfigDict, workdir: str,
        stop_after_step: Optional[int] = None) -> TrainState:
  """Pretrain under `workdir` (resuming from its checkpoints); see
  `train.train_and_evaluate` for `stop_after_step`. Config errors of the method and the
  monitor are raised before anything is compiled or written."""
  method = methods.create(config, total_steps=train.schedule_lengths(config)[0])
  evaluations = monitor.knn_monitors(config, method)
  return train.train_and_evaluate(config, workdir, method, stop_after_step,
                                  evaluations=evaluations)
