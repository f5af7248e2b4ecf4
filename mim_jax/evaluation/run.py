"""Evaluate a pretraining run's encoder: `python -m mim_jax.main
--config=configs/eval/<protocol>.py --config.pretrained=PRETRAIN_WORKDIR --workdir=EVAL_DIR`.

Protocols (the registry: protocols.py; ../shared/docs/METHODS.md "Evaluation protocols"):
'knn' (weighted k-NN, k=20, T=0.07, and 1-NN), 'linear_probe' (BN -> Linear, LARS),
'attentive_probe' (CAE) and 'finetune'. `config.features` says how the encoder is fed:
- 'precomputed' (k-NN, the attentive probe, the small-data linear probe): both splits are
  read through the data pipeline with eval preprocessing (resize, centre crop, normalise;
  no augmentation), encoded once on the mesh, and the protocol runs on those features.
  Writes `config.json`, TensorBoard scalars and `metrics.json` into the eval workdir.
- 'streamed' (fine-tuning, the published linear probe): the generic trainer trains on
  freshly augmented batches through the encoder (`train_on_encoder`, downstream.py).

Config fields of the precomputed protocols (defaults: mim_jax/defaults.py `eval_config`):
  pretrained: workdir of the pretraining run (config.json + checkpoints/).
  pretrained_step: checkpoint step to evaluate (None: the newest).
  use_target: evaluate the EMA target encoder (Latent MIM, PCAE) instead of the online one.
  protocol: 'knn' | 'linear_probe' | 'attentive_probe'.
  pool: 'cls' | 'mean' (mean of the patch tokens) for knn / linear_probe; 'tokens'
    (every token, cls first) for attentive_probe. None: what the pretraining method's
    official code uses (`Method.eval_defaults`).
  block: take the output of this block (1-based, before the final norm) instead of the
    last block after the final norm. None: the method's default (`Method.eval_defaults`).
  data: every field None means "as in the pretraining run" (source, path, splits,
    normalisation, synthetic set...) except image_size, whose default is the size the
    pretraining method evaluates its encoder at (`Method.eval_encoder`: Latent MIM's
    grid·patch, not its training size with gaps); set a field to evaluate elsewhere,
    e.g. --config.data.source=npz --config.data.path=../shared/data/cifar10_small.npz.
    Features come from data.train_split and data.eval_split.
  num_classes: None: data.num_classes for the synthetic source, else 1 + the largest
    label in either split.
  eval_batch_size: global batch of the feature extraction (a multiple of the devices).
  seed: probe initialisation and shuffling.
  knn / linear_probe / attentive_probe: the protocol's hyper-parameters (set by its
    config file, configs/eval/<protocol>.py).

TensorBoard: the final test metrics at step = the pretraining checkpoint's step; probe
training curves ('probe/train_loss', 'probe/lr') at step = epoch. A probe too small to
say anything (`linear_probe.size_warnings`) is logged and listed in metrics.json's
'warnings'.
"""
import functools
import json
import time
from typing import Any, Dict, NamedTuple, Optional, Tuple, Type

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from mim_jax import checkpoint, data, lock, methods
from mim_jax.evaluation import downstream, features, pretrained, protocols
from mim_jax.methods.base import EvalEncoder, Method
from mim_jax.training import config as train_config
from mim_jax.training.loop import train_and_evaluate


def pipeline_config(config, pretrain_config, image_size: int) -> ml_collections.ConfigDict:
  """{seed, data} for the input pipeline: the pretraining data config at the encoder's
  `image_size` with this config's non-None `data` fields on top; the pretraining seed
  (same synthetic set)."""
  merged = ml_collections.ConfigDict(pretrain_config.data.to_dict())
  merged.image_size = image_size
  merged.update({k: v for k, v in config.data.items() if v is not None})
  return ml_collections.ConfigDict({"seed": pretrain_config.seed, "data": merged})


def validate(config, encoder: EvalEncoder) -> int:
  """Errors a user can fix in the eval config (its pool and block resolved), raised
  before anything is compiled (the image size and use_target are checked when `encoder`
  is built). Returns the pretraining checkpoint step to evaluate."""
  features.check_pool(config.pool, protocols.get(config.protocol).pools, "config.pool")
  depth = encoder.module.depth
  if config.block is not None and not 1 <= config.block <= depth:
    raise ValueError(f"config.block={config.block} must be None (the last block) or in "
                     f"[1, {depth}] for this depth-{depth} encoder.")
  data.check_batch_size(config.eval_batch_size, jax.device_count(), jax.process_count(),
                        field="config.eval_batch_size")
  step = pretrained.pretrained_step(config.pretrained, config.pretrained_step)
  if config.protocol == "attentive_probe":
    width = encoder.module.width
    heads = config.attentive_probe.num_heads or encoder.module.num_heads
    if width % heads:
      raise ValueError(f"config.attentive_probe.num_heads={heads} must divide the encoder "
                       f"width {width}.")
  return step


def probe_writer(workdir: str):
  """(TensorBoard writer of an evaluation in `workdir`, written by process 0; the
  per-epoch `log_fn` of `run_protocol`, which writes its scalars as probe/<name>)."""
  writer = metric_writers.create_default_writer(workdir,
                                                just_logging=jax.process_index() != 0)
  log_fn = lambda epoch, scalars: writer.write_scalars(  # noqa: E731
      epoch, {f"probe/{name}": value for name, value in scalars.items()})
  return writer, log_fn


def count_classes(config, data_config, train_labels, test_labels) -> int:
  """config.num_classes, or when None: the synthetic source's data.num_classes, else 1 +
  the largest label in either split."""
  if config.num_classes is not None:
    return config.num_classes
  if data_config.data.source == "synthetic":
    return data_config.data.num_classes
  return int(max(train_labels.max(), test_labels.max())) + 1


def run_protocol(config, train, test, num_classes: int, log_fn, num_heads: int
                 ) -> Dict[str, Any]:
  """The protocol's metrics from (features, labels) of both splits."""
  return protocols.get(config.protocol).precomputed(config, train, test, num_classes, log_fn,
                                                    num_heads)


class ResolvedEvaluation(NamedTuple):
  """A precomputed evaluation config resolved against its pretraining run: the config
  (pool and block resolved), the pretraining run's config and method, the encoder it
  evaluates (`method.eval_encoder`), the input pipeline's config and the checkpoint
  step."""
  config: ml_collections.ConfigDict
  pretrain_config: ml_collections.ConfigDict
  method: Method
  encoder: EvalEncoder
  data_config: ml_collections.ConfigDict
  step: int


def resolve_defaults(config: ml_collections.ConfigDict,
                     method: Method) -> ml_collections.ConfigDict:
  """`config` with `pool` and `block` left None set to what `method` (the pretraining
  run's) declares for the protocol (`Method.eval_defaults`)."""
  config = config.copy_and_resolve_references()
  config.pool, config.block = method.eval_defaults.fill(
      config.protocol, config.pool, config.block, method.config.model.depth)
  return config


def resolve_evaluation(config: ml_collections.ConfigDict) -> ResolvedEvaluation:
  """The `ResolvedEvaluation` of a precomputed knn / linear_probe / attentive_probe config
  (`config` with its pool and block resolved), with every error a user can fix in it
  raised before anything is compiled or written."""
  pretrain_config = pretrained.read_pretrain_config(config.pretrained)
  config, method, encoder, data_config = resolve_for(config, pretrain_config)
  return ResolvedEvaluation(config, pretrain_config, method, encoder, data_config,
                            validate(config, encoder))


def resolve_for(config: ml_collections.ConfigDict, pretrain_config: ml_collections.ConfigDict
                ) -> Tuple[ml_collections.ConfigDict, Method, EvalEncoder,
                           ml_collections.ConfigDict]:
  """(config with its pool and block resolved, method, encoder, input pipeline config) of
  an evaluation config against a pretraining config, reading no workdir or checkpoint."""
  method = methods.create(pretrain_config)
  config = resolve_defaults(config, method)
  encoder = method.eval_encoder(config.use_target, config.data.image_size)
  return config, method, encoder, pipeline_config(config, pretrain_config, encoder.image_size)


def train_on_encoder(config: ml_collections.ConfigDict, workdir: str,
                     method_class: Type[downstream.EncoderMethod],
                     stop_after_step: Optional[int] = None) -> Optional[Dict[str, Any]]:
  """Train `method_class` (a streamed protocol) on `config.pretrained`'s encoder under
  `workdir` (resuming from its checkpoints), with top-1 on the eval split every
  `config.eval_every_steps` and the evaluators `config.evals` asks for; return the final
  metrics (with the method's `size_warnings`, also logged at the start), also written to
  `workdir/metrics.json`; None when the run stopped early (`stop_after_step`,
  preemption)."""
  config = downstream.resolve_config(config)
  schedule = train_config.schedule(config)
  warnings = downstream.planned_size_warnings(config, method_class, schedule)
  for warning in warnings:
    logging.warning("%s", warning)
  total_steps = schedule.total_steps
  method = method_class(config, total_steps)
  evaluation = downstream.TopOneEvaluation(method, config,
                                           config.eval_every_steps or total_steps)
  state = train_and_evaluate(
      config, workdir, method, schedule, stop_after_step,
      evaluations=[evaluation] + protocols.during_training(config, method),
      description=method.description)
  if int(state.step) < total_steps:
    logging.info("%s stopped at step %d of %d; run again to continue.", method.description,
                 int(state.step), total_steps)
    return None
  scalars = evaluation.results.get(total_steps) or evaluation(state)
  metrics = {"protocol": config.protocol, "top1": scalars["eval_top1"],
             "loss": scalars["eval_loss"], "step": total_steps,
             "pretrained": config.pretrained, "pool": config.pool,
             "warnings": warnings}
  checkpoint.write_text(workdir, downstream.METRICS_FILE, json.dumps(metrics, indent=2))
  logging.info("%s top-1 %.2f%% on %s", method.description, metrics["top1"],
               config.data.eval_split)
  return metrics


class TokenCache:
  """The encoder's tokens of the splits one precomputed evaluation extracted, kept for the
  next: k-NN, the linear and the attentive probe, with cls or mean pooling, of the same
  checkpoint (encoder, block, data, split) pool these instead of running the encoder
  again (mim_jax/tools/compare.py evaluates a checkpoint's protocols in a row). It holds
  one checkpoint's tokens at a time ([N, 1 + L, D] float32 per split: 0.5 GB for 10k
  CIFAR images at ViT 192×6, patch 4); pooled in NumPy, the features match the encoder's
  own pooling to float32 rounding (the mean's summation order)."""

  def __init__(self):
    self._key, self._tokens = None, {}

  def features(self, key: str, split: str, pool: str, extract) -> tuple:
    """(features, labels) of `split` pooled by `pool`; `extract()` -> (tokens, labels)
    runs when this cache holds no tokens of `key` (what was extracted, as a string) and
    `split`."""
    if key != self._key:
      self._key, self._tokens = key, {}
    if split not in self._tokens:
      self._tokens[split] = extract()
    tokens, labels = self._tokens[split]
    return np.asarray(features.pool_tokens(tokens, pool)), labels


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             token_cache: Optional[TokenCache] = None) -> Dict[str, Any]:
  """Run `config.protocol` on `config.pretrained`'s encoder as `config.features` says;
  returns the metrics written to `workdir/metrics.json`. A precomputed protocol given
  `token_cache` reads its features from it (extracting tokens into it when it holds
  none of this checkpoint and data)."""
  protocol = protocols.get(config.protocol)
  if config.features not in protocol.features:
    raise ValueError(f"config.features={config.features!r} is not offered by "
                     f"config.protocol={config.protocol!r}; choose one of "
                     f"{protocol.features}.")
  if config.features == "streamed":
    return train_on_encoder(config, workdir, protocol.streamed)
  return evaluate_precomputed(config, workdir, token_cache)


def evaluate_precomputed(config: ml_collections.ConfigDict, workdir: str,
                         token_cache: Optional[TokenCache] = None) -> Dict[str, Any]:
  """`evaluate` on features computed once (knn, linear_probe, attentive_probe), or read
  from `token_cache`."""
  config, pretrain_config, method, encoder, data_config, _ = resolve_evaluation(config)
  splits = (data_config.data.train_split, data_config.data.eval_split)
  if config.protocol == "knn" and config.knn.leave_one_out:
    splits = splits[1:]  # the eval split is its own memory bank
  iterators = [data.create_eval_iterator(data_config, split,
                                         global_batch_size=config.eval_batch_size)
               for split in splits]
  params, pretrained_step = pretrained.read_encoder_params(
      config.pretrained, config.pretrained_step, pretrain_config, method, encoder)
  logging.info("Evaluating %s (%s, step %d) by %s on %s %s, pool %s, block %s",
               config.pretrained, pretrain_config.method.name, pretrained_step,
               config.protocol, data_config.data.source, "/".join(splits), config.pool,
               config.block)

  with lock.hold(workdir):  # one run per workdir (mim_jax/lock.py), from the first write
    checkpoint.write_config(workdir, config)
    mesh = features.data_parallel_mesh()
    start = time.perf_counter()
    extract = lambda split, batches, pool: features.extract_features(
        encoder.module, params, batches, pool=pool, block=config.block, mesh=mesh,
        what=f"{split} images", total=data.num_examples(data_config, split))
    if token_cache is None:
      encoded = [extract(split, batches, config.pool)
                 for split, batches in zip(splits, iterators)]
    else:
      key = json.dumps([config.pretrained, pretrained_step, config.use_target, config.block,
                        data_config.to_dict()], sort_keys=True, default=str)
      encoded = [token_cache.features(key, split, config.pool,
                                      functools.partial(extract, split, batches, "tokens"))
                 for split, batches in zip(splits, iterators)]
    train, test = encoded[0], encoded[-1]  # the same split when leaving one out
    feature_seconds = time.perf_counter() - start
    return probe_on_features(
        config, data_config, splits, train, test, workdir, pretrained_step,
        encoder.module.num_heads, pretrained=config.pretrained,
        pretrained_step=pretrained_step, method=pretrain_config.method.name,
        use_target=config.use_target, pool=config.pool, block=config.block,
        feature_seconds=feature_seconds)


def probe_on_features(config, data_config, splits, train, test, workdir: str, step: int,
                      num_heads: int, **fields) -> Dict[str, Any]:
  """`config.protocol` on (features, labels) of the train and test `splits` read with
  `data_config`: its top-1 scalars written to TensorBoard at `step`, the probe's curves
  per epoch, and workdir/metrics.json: the results, what was evaluated on what, and
  `fields` (e.g. the pretraining run and checkpoint), with pooled features the test
  split's `features.representation_stats` (test_effective_rank, test_mean_cosine).
  Returns the metrics."""
  num_classes = count_classes(config, data_config, train[1], test[1])
  writer, log_fn = probe_writer(workdir)
  start = time.perf_counter()
  try:
    results = run_protocol(config, train, test, num_classes, log_fn, num_heads)
    writer.write_scalars(step, {k: v for k, v in results.items() if k.endswith("top1")})
  finally:
    writer.flush()
  if train[0].ndim == 2:  # pooled features: how collapsed the test split's are
    results = dict(results, **{f"test_{k}": v for k, v in
                               features.representation_stats(test[0]).items()})
  metrics = dict(results, protocol=config.protocol, **fields,
                 data_source=data_config.data.source, splits=list(splits),
                 image_size=data_config.data.image_size, num_train=len(train[1]),
                 num_test=len(test[1]), num_classes=num_classes,
                 feature_shape=list(train[0].shape[1:]),
                 protocol_seconds=time.perf_counter() - start)
  logging.info("Evaluation results: %s", metrics)
  checkpoint.write_text(workdir, "metrics.json", json.dumps(metrics, indent=2))
  return metrics
