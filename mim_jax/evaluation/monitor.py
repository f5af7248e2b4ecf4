"""Evaluators of a run's online encoder during training (big_vision's `config.evals`),
built from the entries of `config.evals` by protocols.during_training: every
`every_steps` steps (and at the last step) the current encoder (the method's
`eval_encoder`, at the image size it is evaluated at) embeds the first `num_train`
examples of the train split and the first `num_eval` of the held-out split (eval
preprocessing, no augmentation; features.py), and the protocol runs on those features:
- 'knn' (`KnnEvaluator`): weighted k-NN top-1 (knn.py: cosine, k = 20, T = 0.07) and 1-NN
  top-1 of the held-out examples, written to TensorBoard as `knn_top1` and `nn1_top1`;
- 'linear_probe' (`LinearProbeEvaluator`): a short linear probe
  (linear_probe.train_linear_probe) trained on the train features, its held-out top-1
  written as `linear_probe_top1`.
All in percent. An entry named other than its protocol writes `<name>/<scalar>`, so
several entries of one protocol stay apart. The fields and their defaults:
mim_jax/defaults.py `evaluator_config`.
"""
import itertools
import math
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

from mim_jax import data
from mim_jax.evaluation import features, knn, linear_probe
from mim_jax.methods.base import EvalDefaults, EvalEncoder

PyTree = Any


class FeatureEvaluator:
  """`evaluator(state, step) -> {scalar: float}` on features of the encoder's params in
  the train state; a subclass sets `protocol` and `scalars` and implements `evaluate`.
  Every mistake in `entry` (config.evals.<name>, its defaults filled) raises ValueError
  naming the field when the evaluator is built, before anything is compiled."""

  protocol = ""
  pools = ("cls", "mean")

  def __init__(self, name: str, entry: ml_collections.ConfigDict,
               config: ml_collections.ConfigDict, encoder: EvalEncoder,
               defaults: EvalDefaults = EvalDefaults()):
    self.field = f"config.evals.{name}"
    self.prefix = "" if name == self.protocol else f"{name}/"
    entry = ml_collections.ConfigDict(entry.to_dict())
    entry.pool, entry.block = defaults.fill(self.protocol, entry.pool, entry.block,
                                            encoder.module.depth)
    features.check_pool(entry.pool, self.pools, f"{self.field}.pool")
    if entry.every_steps < 0:
      raise ValueError(f"{self.field}.every_steps={entry.every_steps} must be >= 0 (0: off).")
    devices = jax.device_count()
    if entry.batch_size <= 0 or entry.batch_size % devices:
      raise ValueError(f"{self.field}.batch_size={entry.batch_size} must be a positive "
                       f"multiple of the {devices} devices.")
    for count in ("num_train", "num_eval"):
      if entry[count] == 0 or entry[count] < -1:
        raise ValueError(f"{self.field}.{count}={entry[count]} must be positive or -1 "
                         "(the whole split).")
    if entry.block is not None and not 1 <= entry.block <= encoder.module.depth:
      raise ValueError(f"{self.field}.block={entry.block} must be None (the last block) or "
                       f"in [1, {encoder.module.depth}] for this encoder.")
    self.config = ml_collections.ConfigDict(config.to_dict())  # its eval images: the
    self.config.data.image_size = encoder.image_size  # size the encoder is evaluated at
    self.entry = entry
    self.every_steps = entry.every_steps
    self.encoder = encoder
    self.splits = (entry.train_split or config.data.train_split,
                   entry.eval_split or config.data.eval_split)

  def features(self, params: PyTree, split: str, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """(features [n, D], labels [n]) of the first `count` examples of `split` (-1: all)."""
    batches = data.create_eval_iterator(self.config, split,
                                        global_batch_size=self.entry.batch_size)
    if count > 0:
      batches = itertools.islice(batches, math.ceil(count / self.entry.batch_size))
    x, y = features.extract_features(self.encoder.module, params, batches,
                                     pool=self.entry.pool, block=self.entry.block)
    return (x, y) if count < 0 else (x[:count], y[:count])

  def evaluate(self, train, test, num_classes: int) -> Dict[str, float]:
    """The protocol's scalars from (features, labels) of both subsets."""
    raise NotImplementedError

  def __call__(self, state, step: Optional[int] = None) -> Dict[str, float]:
    encoder_params = self.encoder.params(state)
    train = self.features(encoder_params, self.splits[0], self.entry.num_train)
    test = self.features(encoder_params, self.splits[1], self.entry.num_eval)
    num_classes = int(max(np.max(train[1]), np.max(test[1]))) + 1
    return {self.prefix + name: value
            for name, value in self.evaluate(train, test, num_classes).items()}


class KnnEvaluator(FeatureEvaluator):
  """Weighted k-NN (`k`, `temperature`) and 1-NN top-1: {'knn_top1', 'nn1_top1'}."""

  protocol = "knn"

  def __init__(self, name, entry, config, encoder, defaults=EvalDefaults()):
    super().__init__(name, entry, config, encoder, defaults)
    if self.entry.k < 1 or self.entry.temperature <= 0:
      raise ValueError(f"{self.field}.k={self.entry.k} must be >= 1 and "
                       f"{self.field}.temperature={self.entry.temperature} > 0.")

  def evaluate(self, train, test, num_classes):
    return knn.knn_accuracy(*train, *test, num_classes=num_classes, k=self.entry.k,
                            temperature=self.entry.temperature)


class LinearProbeEvaluator(FeatureEvaluator):
  """A linear probe (BN -> Linear, LARS; `epochs`, `warmup_epochs`, `base_lr` at batch
  `probe_batch_size`, seeded by config.seed) trained on the train features:
  {'linear_probe_top1'}."""

  protocol = "linear_probe"

  def __init__(self, name, entry, config, encoder, defaults=EvalDefaults()):
    super().__init__(name, entry, config, encoder, defaults)
    e = self.entry
    if e.epochs < 1 or e.probe_batch_size < 1:
      raise ValueError(f"{self.field}.epochs={e.epochs} and {self.field}.probe_batch_size="
                       f"{e.probe_batch_size} must be >= 1.")
    if e.base_lr <= 0 or not 0 <= e.warmup_epochs <= e.epochs:
      raise ValueError(f"{self.field}.base_lr={e.base_lr} must be > 0 and "
                       f"{self.field}.warmup_epochs={e.warmup_epochs} in [0, epochs].")
    self.seed = config.get("seed", 0)

  def evaluate(self, train, test, num_classes):
    e = self.entry
    result = linear_probe.train_linear_probe(
        *train, *test, num_classes=num_classes, epochs=e.epochs,
        batch_size=e.probe_batch_size, base_lr=e.base_lr, warmup_epochs=e.warmup_epochs,
        seed=self.seed)
    return {"linear_probe_top1": result["top1"]}
