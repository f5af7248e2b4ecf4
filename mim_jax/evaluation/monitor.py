"""k-NN monitor of a pretraining run: every `config.knn_monitor.every_steps` steps (and at
the last step) the current online encoder (the method's `eval_encoder`, at the image size
it is evaluated at) embeds the first `num_train` examples of the train split and the
first `num_eval` of the held-out split (eval preprocessing, no augmentation;
features.py), and the weighted k-NN top-1 (knn.py: cosine, k = 20,
T = 0.07) and 1-NN top-1 of the held-out examples are written to TensorBoard as
`knn_top1` and `nn1_top1` (percent).

config.knn_monitor fields (defaults in mim_jax/defaults.py):
  every_steps: 0 turns the monitor off.
  train_split, eval_split: None: config.data.train_split / config.data.eval_split.
  num_train, num_eval: examples taken from the start of each split (-1: all of it).
  batch_size: global batch of the feature pass (a multiple of the devices).
  pool: 'cls' or 'mean' (mean of the patch tokens); block: a 1-based block whose output
    is used (before the final norm); None: the method's declared defaults for k-NN
    (`Method.eval_defaults`); k, temperature: the vote.
"""
import itertools
import math
from typing import Dict, List, Optional

import jax
import ml_collections
import numpy as np

from mim_jax import data
from mim_jax.evaluation import features, knn
from mim_jax.methods.base import EvalDefaults, EvalEncoder, Method

POOLS = ("cls", "mean")


class KnnMonitor:
  """`monitor(state, step) -> {'knn_top1', 'nn1_top1'}` on the encoder's params in the
  train state."""

  def __init__(self, config: ml_collections.ConfigDict, encoder: EvalEncoder,
               defaults: EvalDefaults = EvalDefaults()):
    monitor = ml_collections.ConfigDict(config.knn_monitor.to_dict())
    monitor.pool, monitor.block = defaults.fill("knn", monitor.pool, monitor.block,
                                                encoder.module.depth)
    features.check_pool(monitor.pool, POOLS, "config.knn_monitor.pool")
    if monitor.k < 1 or monitor.temperature <= 0:
      raise ValueError(f"config.knn_monitor.k={monitor.k} must be >= 1 and "
                       f"config.knn_monitor.temperature={monitor.temperature} > 0.")
    devices = jax.device_count()
    if monitor.batch_size <= 0 or monitor.batch_size % devices:
      raise ValueError(f"config.knn_monitor.batch_size={monitor.batch_size} must be a positive "
                       f"multiple of the {devices} devices.")
    if monitor.num_train == 0 or monitor.num_eval == 0:
      raise ValueError("config.knn_monitor.num_train and num_eval must be positive or -1 "
                       "(the whole split).")
    encoder.module.check_block(monitor.block)
    self.config = ml_collections.ConfigDict(config.to_dict())  # its eval images: the
    self.config.data.image_size = encoder.image_size  # size the encoder is evaluated at
    self.monitor = monitor
    self.every_steps = monitor.every_steps
    self.encoder = encoder
    self.splits = (monitor.train_split or config.data.train_split,
                   monitor.eval_split or config.data.eval_split)

  def features(self, params, split: str, count: int):
    """(features [n, D], labels [n]) of the first `count` examples of `split` (-1: all)."""
    batches = data.create_eval_iterator(self.config, split,
                                        global_batch_size=self.monitor.batch_size)
    if count > 0:
      batches = itertools.islice(batches, math.ceil(count / self.monitor.batch_size))
    x, y = features.extract_features(self.encoder.module, params, batches,
                                     pool=self.monitor.pool, block=self.monitor.block)
    return (x, y) if count < 0 else (x[:count], y[:count])

  def __call__(self, state, step: Optional[int] = None) -> Dict[str, float]:
    encoder_params = self.encoder.params(state)
    train_x, train_y = self.features(encoder_params, self.splits[0], self.monitor.num_train)
    test_x, test_y = self.features(encoder_params, self.splits[1], self.monitor.num_eval)
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    return knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=num_classes,
                            k=self.monitor.k, temperature=self.monitor.temperature)


def knn_monitors(config: ml_collections.ConfigDict, method: Method) -> List[KnnMonitor]:
  """[KnnMonitor of `method`'s online encoder, with its evaluation defaults] when
  `config.knn_monitor.every_steps` > 0, else []."""
  monitor = config.get("knn_monitor")
  if monitor is None or monitor.every_steps <= 0:
    return []
  return [KnnMonitor(config, method.eval_encoder(), method.eval_defaults)]
