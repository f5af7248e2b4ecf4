"""Protocols that train on a pretraining run's encoder with the generic trainer
(mim_jax/training/), each as one more `Method`: fine-tuning (finetune.py `FineTune`) and
the streamed linear probe (linear_probe.py `StreamedLinearProbe`).

What they share is here: the trainer config of a run (`resolve_config`: the pretraining
run's model, seed and data, and the pooling its method declares), the pretrained encoder
(`EncoderMethod`) and top-1 on the eval split during and after training
(`TopOneEvaluation`); their config fields are mim_jax/defaults.py `streamed_eval_config`,
the run itself run.py `train_on_encoder`. The trainer gives them sharding, gradient
accumulation, checkpoints with exact resume, TensorBoard and preemption handling; a
fresh run starts from the pretrained encoder (`warm_start`), top-1 on `data.eval_split`
is logged every `eval_every_steps` and at the end, and the final figures go to
`workdir/metrics.json`.
"""
from typing import Any, Dict, List, Optional, Tuple, Type

import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import data, methods, optim, sharding
from mim_jax.evaluation import pretrained
from mim_jax.methods.base import Method
from mim_jax.training import config as train_config

PyTree = Any
METRICS_FILE = "metrics.json"


def resolve_config(config: ml_collections.ConfigDict,
                   pretrain_config: Optional[ml_collections.ConfigDict] = None
                   ) -> ml_collections.ConfigDict:
  """The trainer config of a run on a pretrained encoder: `config` with `model` and `seed`
  of the pretraining run (`config.pretrained`'s config.json, or `pretrain_config`, which
  needs no workdir: the benchmarks), drop path from `method.drop_path_rate` where the
  protocol has one (0 otherwise), its `data` and `sharding` fields that are None from the
  pretraining run's (the image size: the one the pretraining method evaluates its encoder
  at), `data.num_classes` from `config.num_classes` (None: the data's,
  `data.num_classes`), and `pool` (and the linear probe's `block`) None replaced by the
  pretraining method's declared defaults for the protocol (`Method.eval_defaults`).
  Raises ValueError on bad fields before anything is compiled or written."""
  if pretrain_config is None:
    pretrain_config = pretrained.read_pretrain_config(config.get("pretrained"))
    pretrained.pretrained_step(config.pretrained, config.get("pretrained_step"))
  pretrain_method = methods.create(pretrain_config)
  eval_size = pretrain_method.eval_encoder(config.use_target).image_size
  num_devices = jax.device_count()
  if config.eval_batch_size <= 0 or config.eval_batch_size % num_devices:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a positive "
                     f"multiple of the {num_devices} devices.")
  if config.eval_every_steps < 0:
    raise ValueError(f"config.eval_every_steps={config.eval_every_steps} must be >= 0 "
                     "(0: only at the end).")
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.seed = pretrain_config.seed
  resolved.model = ml_collections.ConfigDict(pretrain_config.model.to_dict())
  resolved.model.drop_path_rate = config.method.get("drop_path_rate", 0.0)
  resolved.data = ml_collections.ConfigDict(pretrain_config.data.to_dict())
  resolved.data.image_size = eval_size
  resolved.data.update({k: v for k, v in config.data.items() if v is not None})
  resolved.sharding = ml_collections.ConfigDict(pretrain_config.sharding.to_dict())
  resolved.sharding.update({k: v for k, v in config.sharding.items() if v is not None})
  pool, block = pretrain_method.eval_defaults.fill(
      config.protocol, config.pool, config.get("block"), pretrain_config.model.depth)
  resolved.pool = pool
  if "block" in config:  # the linear probe's; fine-tuning trains the whole encoder
    resolved.block = block
  resolved.data.num_classes = (data.num_classes(resolved) if config.num_classes is None
                               else config.num_classes)
  if resolved.data.num_classes < 2:
    raise ValueError(f"config.num_classes={resolved.data.num_classes} must be at least 2.")
  return resolved


class EncoderMethod(Method):
  """A `Method` on the encoder of a pretraining run: `pretrain_config` (the run's, or
  the one given), `pretrain_method` and `pretrained_encoder`, its `eval_encoder` at
  `config.data.image_size` with `encoder_fields` (e.g. drop path); `num_classes` from
  config.data. Batches are labelled images. A subclass sets `description` (the run's
  name in the log) and `pools` (the `config.pool` values it takes)."""

  batch_keys = ("image", "label")
  description = ""
  pools: Tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict, total_steps: Optional[int] = None,
               pretrain_config: Optional[ml_collections.ConfigDict] = None,
               **encoder_fields):
    super().__init__(config, total_steps)
    if config.pool not in self.pools:
      raise ValueError(f"Unknown config.pool={config.pool!r}; choose one of {self.pools}.")
    self.num_classes = config.data.num_classes
    self.pretrain_config = (pretrained.read_pretrain_config(config.pretrained)
                            if pretrain_config is None else pretrain_config)
    self.pretrain_method = methods.create(self.pretrain_config)
    self.eval_defaults = self.pretrain_method.eval_defaults  # the evaluators'
    self.pretrained_encoder = self.pretrain_method.eval_encoder(
        config.use_target, config.data.image_size, **encoder_fields)

  def pretrained_params(self, like: PyTree) -> PyTree:
    """The pretrained encoder's parameters from checkpoint `config.pretrained_step` (only
    they are read), each checked against `like` (the initialised ones, which may lack
    some: the final norm under mean pooling)."""
    loaded, _ = pretrained.read_encoder_params(
        self.config.pretrained, self.config.pretrained_step, self.pretrain_config,
        self.pretrain_method, self.pretrained_encoder)
    flat_like = {optim.path_name(p): v for p, v in
                 jax.tree_util.tree_flatten_with_path(like)[0]}
    flat_loaded = {optim.path_name(p): v for p, v in
                   jax.tree_util.tree_flatten_with_path(loaded)[0]}
    missing = sorted(set(flat_like) - set(flat_loaded))
    if missing:
      raise ValueError(f"The pretrained encoder in {self.config.pretrained} lacks {missing}: "
                       f"it does not match the {self.description} encoder.")
    for path, value in flat_like.items():
      if flat_loaded[path].shape != value.shape:
        raise ValueError(f"Pretrained {path} has shape {flat_loaded[path].shape}, the "
                         f"{self.description} encoder needs {value.shape} "
                         "(config.data.image_size must equal the pretraining one with a "
                         "relative position bias).")
    return jax.tree_util.tree_map_with_path(lambda p, _: flat_loaded[optim.path_name(p)], like)

  def make_masks(self, rng, batch):
    return {}

  @classmethod
  def size_warnings(cls, config: ml_collections.ConfigDict, num_train: int,
                    total_steps: int) -> List[str]:
    """What makes a run of `config` (resolved) on `num_train` examples for `total_steps`
    steps too small to say anything, each with how to fix it (none by default)."""
    del config, num_train, total_steps
    return []

  def logits(self, params: PyTree, target_params: PyTree, images: jax.Array) -> jax.Array:
    """[B, num_classes] logits of `images` in evaluation mode."""
    raise NotImplementedError


class TopOneEvaluation:
  """Top-1 accuracy (%) and cross-entropy of the classifier on `config.data.eval_split`,
  sharded over the mesh; called by the trainer every `every_steps` steps. `results`
  keeps each step's scalars."""

  def __init__(self, method: EncoderMethod, config: ml_collections.ConfigDict,
               every_steps: int):
    self.config = config
    self.every_steps = every_steps
    self.num_classes = method.num_classes
    self.batch_sharding = sharding.batch_sharding(sharding.create_mesh(config))
    self.results: Dict[int, Dict[str, float]] = {}
    num_classes = method.num_classes

    def sums(params, target_params, batch):
      logits = method.logits(params, target_params, batch["image"]).astype(jnp.float32)
      valid = batch["valid"]
      correct = (jnp.argmax(logits, axis=-1) == batch["label"]) & valid
      nll = -jnp.sum(jax.nn.one_hot(batch["label"], num_classes) *
                     jax.nn.log_softmax(logits), axis=-1)
      return {"correct": jnp.sum(correct), "nll": jnp.sum(jnp.where(valid, nll, 0.0)),
              "count": jnp.sum(valid)}

    self.sums = jax.jit(sums)

  def __call__(self, state, step: Optional[int] = None) -> Dict[str, float]:
    totals = {"correct": 0.0, "nll": 0.0, "count": 0.0}
    for local in data.create_eval_iterator(self.config, self.config.data.eval_split,
                                           global_batch_size=self.config.eval_batch_size):
      labels = local["label"][local["valid"]]
      if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
        raise ValueError(f"Eval labels reach {labels.max()}, beyond config.data.num_classes="
                         f"{self.num_classes}: set config.num_classes.")
      batch = sharding.global_batch(
          {k: local[k] for k in ("image", "label", "valid")}, self.batch_sharding)
      sums = self.sums(state.params, state.target_params, batch)
      for k, v in jax.device_get(sums).items():
        totals[k] += float(v)
    count = max(totals["count"], 1.0)
    scalars = {"eval_top1": 100.0 * totals["correct"] / count,
               "eval_loss": totals["nll"] / count}
    if step is not None:
      self.results[step] = scalars
    return scalars


def planned_size_warnings(resolved: ml_collections.ConfigDict,
                          method_class: Type[EncoderMethod],
                          schedule: Optional[train_config.Schedule] = None) -> List[str]:
  """`method_class.size_warnings` of a run of `resolved` (`resolve_config`'s output) on its
  train split, for `schedule` (default: the config's)."""
  schedule = schedule or train_config.schedule(resolved)
  return method_class.size_warnings(resolved,
                                    data.num_examples(resolved, resolved.data.train_split),
                                    schedule.total_steps)
