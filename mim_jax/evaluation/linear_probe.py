"""Linear probe on a frozen encoder (MAE, He et al. 2022, Appendix A.2; facebookresearch/mae
main_linprobe.py): BatchNorm without affine (eps 1e-6) -> Linear, LARS (momentum 0.9,
wd 0, trust coefficient 0.001, biases excluded as in mae/util/lars.py), lr = base_lr ·
batch/256, linear warmup then cosine decay per step, 90 epochs, cross-entropy.

Two ways to feed it (`config.features`, configs/eval/linear_probe.py):
- 'streamed', the published protocol (`StreamedLinearProbe`): every step a freshly
  augmented batch (RandomResizedCrop 0.08–1 + flip, the train pipeline) goes through the
  frozen encoder inside the jitted step, trained by the generic trainer (sharding,
  gradient accumulation, exact resume; mim_jax/evaluation/downstream.py), batch 16384.
- 'precomputed', for small data on a CPU (`train_linear_probe`): features computed once
  from the un-augmented train split (features.py), the probe trained on them by
  `fit_classifier`, the loop shared with the attentive probe.
Both warn when the probe is too small to say anything (`size_warnings`).
"""
from typing import Any, Callable, Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mim_jax import optim
from mim_jax.evaluation import downstream, features
from mim_jax.methods.base import TARGET_UPDATES, EvalEncoder

# Fewer optimizer steps than this in all and a probe has barely moved from its
# initialisation (4,000 CIFAR images at batch 256 for 90 epochs: 1,350 steps).
MIN_PROBE_STEPS = 100
LogFn = Callable[[int, Dict[str, float]], None]


class LinearProbe(nn.Module):
  """BatchNorm (no scale/shift; running statistics for evaluation) -> Dense, the head
  initialised N(0, 0.01²) with zero bias (main_linprobe.py)."""
  num_classes: int
  bn_eps: float = 1e-6
  bn_momentum: float = 0.1  # torch convention: weight of the new batch statistics

  @nn.compact
  def __call__(self, features, train: bool):
    x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                     epsilon=self.bn_eps, momentum=1.0 - self.bn_momentum, name="bn")(features)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)


def size_warnings(batch_size: int, num_train: int, steps: int, fix: str) -> List[str]:
  """Why a probe of `steps` optimizer steps at `batch_size` on `num_train` examples says
  little, each with `fix` (what to change): a batch larger than the training set, or
  fewer than MIN_PROBE_STEPS steps in all."""
  out = []
  if batch_size > num_train:
    out.append(f"The probe's batch of {batch_size} exceeds the {num_train} training "
               f"examples: {fix}.")
  if steps < MIN_PROBE_STEPS:
    out.append(f"The probe takes only {steps} optimizer steps in all (fewer than "
               f"{MIN_PROBE_STEPS}), too few to train it: {fix}.")
  return out


def probe_batches(batch_size: int, num_train: int, epochs: int, protocol: str):
  """(batch, steps per epoch, `size_warnings`, also logged) of a probe on precomputed
  features: the batch is capped at the training set (the last partial batch of each
  epoch is dropped)."""
  capped = min(batch_size, num_train)
  steps_per_epoch = num_train // capped
  warnings = size_warnings(batch_size, num_train, epochs * steps_per_epoch,
                           f"lower config.{protocol}.batch_size or raise "
                           f"config.{protocol}.epochs")
  for warning in warnings:
    logging.warning("%s", warning)
  return capped, steps_per_epoch, warnings


def probe_arrays(train_x, train_y, test_x, test_y, *, ndim: int, shape_hint: str,
                 num_classes: int, batch_size: int, epochs: int):
  """(train_x, train_y, test_x, test_y) as float32 / integer NumPy arrays, or a
  ValueError saying what to change: features of rank `ndim` (`shape_hint` names the
  expected shape and how to get it), one label per example, labels in range."""
  train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  if train_x.ndim != ndim:
    raise ValueError(f"The probe needs {shape_hint}, got {train_x.shape}.")
  if len(train_x) != len(train_y) or len(test_x) != len(test_y):
    raise ValueError(f"Need one label per example: train {len(train_x)} vs {len(train_y)}, "
                     f"test {len(test_x)} vs {len(test_y)}.")
  if len(train_x) == 0 or len(test_x) == 0:
    raise ValueError("The probe needs at least one train and one test example.")
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(f"Train and test features differ in shape: {train_x.shape[1:]} vs "
                     f"{test_x.shape[1:]}.")
  for name, y in (("train", train_y), ("test", test_y)):
    if y.min() < 0 or y.max() >= num_classes:
      raise ValueError(f"{name} labels must lie in [0, num_classes={num_classes}), got "
                       f"[{y.min()}, {y.max()}].")
  if batch_size < 1 or epochs < 1:
    raise ValueError(f"Need batch_size >= 1 and epochs >= 1, got {batch_size}, {epochs}.")
  return train_x, train_y, test_x, test_y


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int,
                  min_lr: float = 0.0) -> optax.Schedule:
  """`optim.lr_schedule` with the warmup cut to the run (mae/util/lr_sched.py
  adjust_learning_rate per iteration; CAE utils.cosine_scheduler)."""
  return optim.lr_schedule(peak_lr, total_steps, min(warmup_steps, total_steps), min_lr)


def fit_classifier(model: nn.Module, tx: optax.GradientTransformation,
                   train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, *, epochs: int, batch_size: int, seed: int,
                   lr_fn: optax.Schedule, eval_batch_size: int = 1024,
                   log_fn: Optional[LogFn] = None) -> Dict[str, Any]:
  """Train `model(x, train)` (params + 'batch_stats') with softmax cross-entropy on
  `train_x` for `epochs` epochs of shuffled batches of `batch_size` (the last partial
  batch of each epoch dropped, as torch's drop_last), then report test accuracy.

  Runs on the default device: each epoch is one jitted scan over its steps. `log_fn`
  (epoch, {'train_loss', 'lr'}) is called after every epoch. Returns {'top1' (percent),
  'train_top1' (percent, last epoch's batches), 'train_loss', 'steps', 'batch_size'}.
  """
  num_train = len(train_x)
  batch_size = min(batch_size, num_train)
  steps_per_epoch = num_train // batch_size
  init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.asarray(train_x[:1]), train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  xs, ys = jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32)

  def loss_fn(params, batch_stats, x, y):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return loss, (updates["batch_stats"], correct)

  def train_step(carry, idx):
    params, batch_stats, opt_state = carry
    (loss, (batch_stats, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, xs[idx], ys[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), (loss, correct)

  @jax.jit
  def train_epoch(carry, epoch):
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    steps = order[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    carry, (losses, correct) = jax.lax.scan(train_step, carry, steps)
    return carry, losses.mean(), correct.sum()

  carry = (params, batch_stats, opt_state)
  for epoch in range(epochs):
    carry, loss, correct = train_epoch(carry, epoch)
    if log_fn is not None:
      log_fn(epoch + 1, {"train_loss": float(loss),
                         "lr": float(lr_fn((epoch + 1) * steps_per_epoch - 1))})
  params, batch_stats, _ = carry

  @jax.jit
  def predict(x):
    return jnp.argmax(model.apply({"params": params, "batch_stats": batch_stats}, x,
                                  train=False), -1)

  predictions = []
  for start in range(0, len(test_x), eval_batch_size):
    chunk = test_x[start:start + eval_batch_size]
    size = len(chunk)
    if size < eval_batch_size and start > 0:  # pad the tail: one compilation for all chunks
      chunk = np.concatenate([chunk, np.zeros((eval_batch_size - size,) + chunk.shape[1:],
                                              chunk.dtype)])
    predictions.append(np.asarray(predict(jnp.asarray(chunk)))[:size])
  top1 = 100.0 * float(np.mean(np.concatenate(predictions) == np.asarray(test_y)))
  return {"top1": top1, "train_top1": 100.0 * float(correct) / (steps_per_epoch * batch_size),
          "train_loss": float(loss), "steps": epochs * steps_per_epoch,
          "batch_size": batch_size}


def train_linear_probe(train_features: np.ndarray, train_labels: np.ndarray,
                       test_features: np.ndarray, test_labels: np.ndarray, *,
                       num_classes: int, epochs: int = 90, batch_size: int = 256,
                       base_lr: float = 0.1, warmup_epochs: float = 10, seed: int = 0,
                       weight_decay: float = 0.0, bn_eps: float = 1e-6,
                       eval_batch_size: int = 1024,
                       log_fn: Optional[LogFn] = None) -> Dict[str, Any]:
  """Linear probe on [N, D] features; returns fit_classifier's dict ('top1' in percent)
  plus 'peak_lr' and 'warnings' (`size_warnings`).

  `batch_size` is capped at the number of training examples, and the peak lr scales with
  the batch actually used.
  """
  train_x, train_y, test_x, test_y = probe_arrays(
      train_features, train_labels, test_features, test_labels, ndim=2,
      shape_hint="[N, D] features (pool='cls' or 'mean')", num_classes=num_classes,
      batch_size=batch_size, epochs=epochs)
  batch_size, steps_per_epoch, warnings = probe_batches(batch_size, len(train_x), epochs,
                                                       "linear_probe")
  peak_lr = base_lr * batch_size / 256
  lr_fn = warmup_cosine(peak_lr, epochs * steps_per_epoch,
                        int(round(warmup_epochs * steps_per_epoch)))
  tx = optim.lars(lr_fn, weight_decay, 0.9, optim.decay_mask)
  result = fit_classifier(LinearProbe(num_classes, bn_eps), tx, train_x, train_y, test_x,
                          test_y, epochs=epochs, batch_size=batch_size, seed=seed, lr_fn=lr_fn,
                          eval_batch_size=eval_batch_size, log_fn=log_fn)
  result.update(peak_lr=peak_lr, warnings=warnings)
  return result


class StreamedLinearProbe(downstream.EncoderMethod):
  """The published linear probe (mae/main_linprobe.py) as a method of the generic
  trainer: each step encodes a freshly augmented batch with the frozen encoder inside the
  jitted step and trains BN (no affine) -> Linear on its `config.pool` feature (of block
  `config.block`, None: the last after the final norm). The optimizer sees only the head
  (params {'head'}); the encoder and the BatchNorm running statistics are target params
  ({'encoder', 'batch_stats'}): the trainer takes no gradient through them, shards the
  encoder like pretraining's, checkpoints both and stores the statistics each step
  (`TARGET_UPDATES`). Config (configs/eval/linear_probe.py): `pool`, `block`,
  `method.bn_eps`, `method.bn_momentum`, and defaults.streamed_eval_config's fields.

  Differs from main_linprobe.py: the BatchNorm statistics are those of the global batch
  (torch: each GPU's share, without SyncBatchNorm), and its running variance is updated
  with the biased batch variance (flax; torch: unbiased)."""

  description = "Linear probe"
  pools = ("cls", "mean")

  def __init__(self, config, total_steps=None, pretrain_config=None):
    super().__init__(config, total_steps, pretrain_config)
    self.pretrained_encoder.module.check_block(config.block)
    self.probe = LinearProbe(self.num_classes, config.method.bn_eps, config.method.bn_momentum)

  def encode(self, encoder_params, images):
    """[B, S, S, 3] images -> [B, D] float32 `config.pool` features of the frozen encoder."""
    tokens = self.pretrained_encoder.module.apply({"params": encoder_params}, images,
                                                  block=self.config.block)
    return features.pool_tokens(tokens, self.config.pool).astype(jnp.float32)

  def init(self, rng, batch):
    width = self.pretrained_encoder.module.width
    return self.probe.init(rng, jnp.zeros((1, width)), train=False)["params"]

  def init_targets(self, rng, batch, params):
    width = self.pretrained_encoder.module.width
    return {"encoder": self.pretrained_encoder.module.init(rng, batch["image"])["params"],
            "batch_stats": self.probe.init(rng, jnp.zeros((1, width)),
                                           train=False)["batch_stats"]}

  def warm_start(self, params, target_params):
    """The pretrained encoder in place of the initialised one."""
    return params, {**target_params,
                    "encoder": self.pretrained_params(target_params["encoder"])}

  def loss(self, params, target_params, batch, masks, rng, step):
    x = self.encode(target_params["encoder"], batch["image"])  # [B, D]
    logits, updates = self.probe.apply(
        {"params": params, "batch_stats": target_params["batch_stats"]}, x, train=True,
        mutable=["batch_stats"])
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    top1 = 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {"train_top1": top1, TARGET_UPDATES: {"batch_stats": updates["batch_stats"]}}

  def logits(self, params, target_params, images):
    x = self.encode(target_params["encoder"], images)
    return self.probe.apply({"params": params, "batch_stats": target_params["batch_stats"]},
                            x, train=False)

  def eval_encoder(self, use_target=False, image_size=None, **module_fields):
    """The frozen encoder, where this run keeps it (for the evaluators of `config.evals`)."""
    del use_target, image_size, module_fields
    return EvalEncoder(self.pretrained_encoder.module, path=("target_params", "encoder"))

  @classmethod
  def size_warnings(cls, config, num_train, total_steps):
    return size_warnings(config.batch_size, num_train, total_steps,
                         "for small data use configs/eval/linear_probe.py:cifar (features "
                         "computed once, batch 256), or lower config.batch_size")
