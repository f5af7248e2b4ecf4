"""End-to-end fine-tuning of a pretrained encoder for classification, run by the generic
trainer (mim_jax/train.py) as one more `Method`.

Follows facebookresearch/mae main_finetune.py and models_vit.py: the pretrained encoder
with drop path (0.1), pooled by the mean of the last block's patch tokens followed by a
fresh LayerNorm `fc_norm` in place of the final norm (`global_pool`, the default) or by
the final-normed cls token (`method.pool='cls'`); a linear head initialised
trunc-normal(2e-5) with zero bias; mixup 0.8 / cutmix 1.0 (switch probability 0.5) with
label smoothing 0.1 on the targets (mixup.py) and soft-target cross-entropy; AdamW
(0.9, 0.999), wd 0.05 (none on biases, norms, tokens), layer-wise lr decay 0.65
(optim.layer_decay_multipliers); warmup 5 then cosine over 100 epochs.
The train batches get the pipeline's RandomResizedCrop + flip; RandAugment and random
erasing of the official recipe are not implemented.

The trainer gives sharding, accumulation, checkpoints with exact resume, TensorBoard and
preemption handling; a fresh run starts from the pretrained encoder (`warm_start`),
top-1 on `data.eval_split` is logged every `eval_every_steps` and at the end, and the
final figures go to `workdir/metrics.json`.
"""
import json
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mim_jax import checkpoint, data, methods, optim, sharding, train
from mim_jax.evaluation import mixup, monitor, pretrained
from mim_jax.methods.base import Method
from mim_jax.models import vit

POOLS = ("mean", "cls")
METRICS_FILE = "metrics.json"


class ViTClassifier(nn.Module):
  """Encoder -> pooled feature -> linear head (mae/models_vit.py `VisionTransformer`).

  'mean': mean of the last block's patch tokens (no cls, no final norm), then `fc_norm`;
  'cls': the cls token after the encoder's final norm."""
  encoder: vit.ViTEncoder
  num_classes: int
  pool: str = "mean"
  head_init_std: float = 2e-5

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    if self.pool == "mean":
      tokens = self.encoder(images, deterministic=deterministic, block=self.encoder.depth)
      pooled = tokens[:, 1:].astype(jnp.float32).mean(axis=1)  # [B, D]
      features = nn.LayerNorm(epsilon=vit.LN_EPS, name="fc_norm")(pooled)
    else:
      features = self.encoder(images, deterministic=deterministic)[:, 0].astype(jnp.float32)
    head_init = (nn.initializers.truncated_normal(self.head_init_std) if self.head_init_std > 0
                 else nn.initializers.zeros)
    return nn.Dense(self.num_classes, kernel_init=head_init, name="head")(features)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of −Σ_c targets·log softmax(logits) (timm SoftTargetCrossEntropy)."""
  return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))


class FineTune(Method):
  """Config: `pretrained` (workdir of a pretraining run), `pretrained_step`, `use_target`;
  `method.pool`, `method.head_init_std`, `method.mixup_alpha`, `method.cutmix_alpha`,
  `method.mix_prob`, `method.switch_prob`, `method.label_smoothing`; `data.num_classes`.
  `config.model` is the pretraining run's (see `finetune_config`). The encoder is the
  pretraining method's `eval_encoder` at `config.data.image_size` with
  `config.model.drop_path_rate`; params {'encoder', 'fc_norm', 'head'}."""

  batch_keys = ("image", "label")

  def __init__(self, config: ml_collections.ConfigDict, total_steps=None):
    super().__init__(config, total_steps)
    m = config.method
    self.num_classes = config.data.num_classes
    self.pretrain_config = pretrained.read_pretrain_config(config.pretrained)
    self.pretrain_method = methods.create(self.pretrain_config)
    self.pretrained_encoder = self.pretrain_method.eval_encoder(
        config.get("use_target", False), config.data.image_size,
        drop_path_rate=config.model.drop_path_rate)
    self.classifier = ViTClassifier(self.pretrained_encoder.module,
                                    num_classes=self.num_classes, pool=m.pool,
                                    head_init_std=m.head_init_std)

  def init(self, rng, batch):
    return self.classifier.init(rng, batch["image"])["params"]

  def warm_start(self, params):
    """The pretrained encoder's weights in place of the initialised ones (only they are
    read from the checkpoint); the head and fc_norm keep their initialisation. The final
    norm is dropped with mean pooling."""
    loaded, _ = pretrained.read_encoder_params(
        self.config.pretrained, self.config.get("pretrained_step"), self.pretrain_config,
        self.pretrain_method, self.pretrained_encoder)
    flat_init = {optim.path_name(p): v for p, v in
                 jax.tree_util.tree_flatten_with_path(params["encoder"])[0]}
    flat_loaded = {optim.path_name(p): v for p, v in
                   jax.tree_util.tree_flatten_with_path(loaded)[0]}
    missing = sorted(set(flat_init) - set(flat_loaded))
    if missing:
      raise ValueError(f"The pretrained encoder in {self.config.pretrained} lacks {missing}: "
                       "it does not match the fine-tuning encoder.")
    for path, value in flat_init.items():
      if flat_loaded[path].shape != value.shape:
        raise ValueError(f"Pretrained {path} has shape {flat_loaded[path].shape}, the "
                         f"fine-tuning encoder needs {value.shape} (config.data.image_size "
                         "must equal the pretraining one with a relative position bias).")
    encoder = jax.tree_util.tree_map_with_path(
        lambda p, _: flat_loaded[optim.path_name(p)], params["encoder"])
    return {**params, "encoder": encoder}

  def make_masks(self, rng, batch):
    return {}

  def loss(self, params, target_params, batch, masks, rng, step):
    m = self.config.method
    mix_rng, drop_rng = jax.random.split(rng)
    images, targets, lam = mixup.mixup_cutmix(
        mix_rng, batch["image"], batch["label"], num_classes=self.num_classes,
        mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.mix_prob,
        switch_prob=m.switch_prob, smoothing=m.label_smoothing)
    logits = self.classifier.apply({"params": params}, images, deterministic=False,
                                   rngs={"dropout": drop_rng})
    return soft_cross_entropy(logits, targets), {"mix_lambda": lam}

  def logits(self, params, images):
    return self.classifier.apply({"params": params}, images)


class TopOneEvaluation:
  """Top-1 accuracy (%) and cross-entropy of the classifier on `config.data.eval_split`,
  sharded over the mesh; called by the trainer every `every_steps` steps. `results`
  keeps each step's scalars."""

  def __init__(self, method: FineTune, config: ml_collections.ConfigDict, every_steps: int):
    self.config = config
    self.every_steps = every_steps
    self.num_classes = method.num_classes
    self.batch_sharding = sharding.batch_sharding(sharding.create_mesh(config))
    self.results: Dict[int, Dict[str, float]] = {}
    num_classes = method.num_classes

    def sums(params, batch):
      logits = method.logits(params, batch["image"]).astype(jnp.float32)
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
                         f"{self.num_classes}: set config.data.num_classes.")
      batch = sharding.global_batch(
          {k: local[k] for k in ("image", "label", "valid")}, self.batch_sharding)
      for k, v in jax.device_get(self.sums(state.params, batch)).items():
        totals[k] += float(v)
    count = max(totals["count"], 1.0)
    scalars = {"eval_top1": 100.0 * totals["correct"] / count,
               "eval_loss": totals["nll"] / count}
    if step is not None:
      self.results[step] = scalars
    return scalars


def finetune_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The trainer config of a fine-tuning run: `config` with `model` and `seed` taken from
  the pretraining run in `config.pretrained` (drop path from `method.drop_path_rate`),
  its `data` fields that are None from the pretraining data config (the image size: the
  one the pretraining method evaluates its encoder at), and `data.num_classes` from
  `config.num_classes`. Raises ValueError on bad fields before any compilation."""
  workdir = config.get("pretrained")
  pretrain = pretrained.read_pretrain_config(workdir)
  pretrained.pretrained_step(workdir, config.get("pretrained_step"))
  eval_size = methods.create(pretrain).eval_encoder(config.get("use_target", False)).image_size
  m = config.method
  if m.pool not in POOLS:
    raise ValueError(f"Unknown config.method.pool={m.pool!r}; choose one of {POOLS}.")
  num_devices = jax.device_count()
  if config.eval_batch_size <= 0 or config.eval_batch_size % num_devices:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a positive "
                     f"multiple of the {num_devices} devices.")
  if config.eval_every_steps < 0:
    raise ValueError(f"config.eval_every_steps={config.eval_every_steps} must be >= 0 "
                     "(0: only at the end).")
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.seed = pretrain.seed
  resolved.model = pretrain.model
  resolved.model.drop_path_rate = m.drop_path_rate
  resolved.data = ml_collections.ConfigDict(pretrain.data.to_dict())
  resolved.data.image_size = eval_size
  resolved.data.update({k: v for k, v in config.data.items() if v is not None})
  num_classes = config.get("num_classes")
  if num_classes is None and resolved.data.source != "synthetic":
    raise ValueError("Set config.num_classes to the number of classes of the fine-tuning "
                     f"data (config.data.source={resolved.data.source!r}).")
  resolved.data.num_classes = resolved.data.num_classes if num_classes is None else num_classes
  if resolved.data.num_classes < 2:
    raise ValueError(f"config.num_classes={resolved.data.num_classes} must be at least 2.")
  return resolved


def run(config: ml_collections.ConfigDict, workdir: str,
        stop_after_step: Optional[int] = None) -> Optional[Dict[str, Any]]:
  """Fine-tune `config.pretrained`'s encoder under `workdir` (resuming from its
  checkpoints) and return the final metrics, also written to `workdir/metrics.json`;
  None when the run stopped early (`stop_after_step`, preemption)."""
  config = finetune_config(config)
  total_steps = train.schedule_lengths(config)[0]
  method = FineTune(config, total_steps)
  evaluation = TopOneEvaluation(method, config, config.eval_every_steps or total_steps)
  state = train.train_and_evaluate(config, workdir, method, stop_after_step,
                                   evaluations=[evaluation] + monitor.knn_monitors(config,
                                                                                  method),
                                   description="Fine-tuning")
  if int(state.step) < total_steps:
    logging.info("Fine-tuning stopped at step %d of %d; run again to continue.",
                 int(state.step), total_steps)
    return None
  scalars = evaluation.results.get(total_steps) or evaluation(state)
  metrics = {"protocol": "finetune", "top1": scalars["eval_top1"],
             "loss": scalars["eval_loss"], "step": total_steps,
             "pretrained": config.pretrained, "pool": config.method.pool}
  checkpoint.write_text(workdir, METRICS_FILE, json.dumps(metrics, indent=2))
  logging.info("Fine-tuning top-1 %.2f%% on %s", metrics["top1"], config.data.eval_split)
  return metrics
