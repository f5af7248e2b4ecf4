"""The evaluation protocols, in one registry (big_vision's evaluators built from the
config; ../shared/docs/METHODS.md "Evaluation protocols"): for each, the `config.pool`
values it reads, the metrics.json key of its headline top-1, how it runs after training
(`precomputed`: on features computed once, run.py; `streamed`: as a `Method` of the
generic trainer, downstream.py) and the evaluator it offers during training
(`during_training`, from `config.evals`; monitor.py).

A module of its own rather than the package's `__init__`: importing any evaluation module
(k-NN alone, say) should not pull in the trainer that the streamed protocols need.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import ml_collections

from mim_jax import defaults
from mim_jax.evaluation import (attentive_probe, downstream, finetune, knn, linear_probe,
                                monitor)
from mim_jax.methods.base import Method

# (config, (train features, labels), (test features, labels), num_classes, log_fn,
#  encoder heads) -> metrics: a protocol on features computed once.
Precomputed = Callable[..., Dict[str, Any]]


def _knn(config, train, test, num_classes, log_fn, num_heads):
  del log_fn, num_heads
  return knn.knn_accuracy(*train, *test, num_classes=num_classes, **config.knn.to_dict())


def _linear_probe(config, train, test, num_classes, log_fn, num_heads):
  del num_heads
  return linear_probe.train_linear_probe(*train, *test, num_classes=num_classes,
                                         seed=config.seed, log_fn=log_fn,
                                         **config.linear_probe.to_dict())


def _attentive_probe(config, train, test, num_classes, log_fn, num_heads):
  kwargs = config.attentive_probe.to_dict()
  kwargs["num_heads"] = kwargs["num_heads"] or num_heads
  return attentive_probe.train_attentive_probe(*train, *test, num_classes=num_classes,
                                               seed=config.seed, log_fn=log_fn, **kwargs)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One evaluation protocol. `top1`: the metrics.json key of its headline top-1 (what a
  comparison reports); `precomputed` / `streamed`: how `config.features` of that name runs
  it (None: not offered); `evaluator`: its evaluator during training (None: none)."""
  name: str
  pools: Tuple[str, ...]
  top1: str
  precomputed: Optional[Precomputed] = None
  streamed: Optional[Type[downstream.EncoderMethod]] = None
  evaluator: Optional[Type[monitor.FeatureEvaluator]] = None

  @property
  def features(self) -> Tuple[str, ...]:
    """The `config.features` values it takes."""
    return tuple(kind for kind, runner in (("precomputed", self.precomputed),
                                           ("streamed", self.streamed)) if runner)


PROTOCOLS: Dict[str, Protocol] = {p.name: p for p in (
    Protocol("knn", ("cls", "mean"), "knn_top1", precomputed=_knn,
             evaluator=monitor.KnnEvaluator),
    Protocol("linear_probe", ("cls", "mean"), "top1", precomputed=_linear_probe,
             streamed=linear_probe.StreamedLinearProbe,
             evaluator=monitor.LinearProbeEvaluator),
    Protocol("attentive_probe", ("tokens",), "top1", precomputed=_attentive_probe),
    Protocol("finetune", finetune.FineTune.pools, "top1", streamed=finetune.FineTune),
)}


def get(name: str, field: str = "config.protocol") -> Protocol:
  """The protocol `name`, or a ValueError naming `field` and the choices."""
  if name not in PROTOCOLS:
    raise ValueError(f"Unknown {field}={name!r}; choose one of {sorted(PROTOCOLS)}.")
  return PROTOCOLS[name]


def names(features: Optional[str] = None) -> Tuple[str, ...]:
  """The protocols' names (with `features`: those that run that way)."""
  return tuple(name for name, p in PROTOCOLS.items()
               if features is None or features in p.features)


def is_evaluation(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` is an evaluation config (configs/eval/: it names its `protocol`)
  rather than a pretraining one."""
  return "protocol" in config


def during_training(config: ml_collections.ConfigDict, method: Method
                    ) -> List[monitor.FeatureEvaluator]:
  """The evaluators of `method`'s online encoder (with its evaluation defaults) that the
  entries of `config.evals` with `every_steps` > 0 ask for. An entry needs only its
  `protocol` and the fields it changes (the rest: defaults.evaluator_config); every
  mistake raises ValueError naming the field, before anything is compiled."""
  evaluators = []
  for name, entry in config.get("evals", {}).items():
    field = f"config.evals.{name}"
    protocol = get(entry.get("protocol"), f"{field}.protocol")
    if protocol.evaluator is None:
      raise ValueError(f"{field}.protocol={protocol.name!r} has no evaluator during "
                       "training; choose one of "
                       f"{[n for n, p in PROTOCOLS.items() if p.evaluator]}.")
    fields = defaults.evaluator_config(protocol.name)
    unknown = sorted(set(entry) - set(fields))
    if unknown:
      raise ValueError(f"{field} has no field {unknown[0]!r}; a {protocol.name!r} entry has "
                       f"{sorted(fields)}.")
    fields.update(entry.to_dict())
    if fields.every_steps != 0:
      evaluators.append(protocol.evaluator(name, fields, config, method.eval_encoder(),
                                           method.eval_defaults))
  return evaluators
