"""Linear probe on frozen features (MAE, He et al. 2022, Appendix A.2; facebookresearch/mae
main_linprobe.py): BatchNorm without affine (eps 1e-6) -> Linear, LARS (momentum 0.9,
wd 0, trust coefficient 0.001, biases excluded as in mae/util/lars.py), lr = base_lr ·
batch/256, linear warmup then cosine decay per step, 90 epochs, cross-entropy.

Design choice: the probe trains on features precomputed once from the un-augmented train
split (see features.py), not on features of freshly augmented crops every epoch as the
official script does; this keeps the probe CPU-feasible and deterministic.
`fit_classifier` is the training loop shared with the attentive probe.
"""
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

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
  """0 -> peak_lr linearly over warmup_steps, then half-cosine to min_lr at total_steps
  (mae/util/lr_sched.py adjust_learning_rate per iteration; CAE utils.cosine_scheduler)."""
  warmup_steps = min(warmup_steps, total_steps)
  if warmup_steps == total_steps:
    return optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, min_lr)


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
  plus 'peak_lr'.

  The published recipe uses batch 16384 (lr 6.4); `batch_size` is capped at the number
  of training examples, and the peak lr scales with the batch actually used.
  """
  train_x, train_y, test_x, test_y = probe_arrays(
      train_features, train_labels, test_features, test_labels, ndim=2,
      shape_hint="[N, D] features (pool='cls' or 'mean')", num_classes=num_classes,
      batch_size=batch_size, epochs=epochs)
  batch_size = min(batch_size, len(train_x))
  steps_per_epoch = len(train_x) // batch_size
  peak_lr = base_lr * batch_size / 256
  lr_fn = warmup_cosine(peak_lr, epochs * steps_per_epoch,
                        int(round(warmup_epochs * steps_per_epoch)))
  matrices_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.lars(lr_fn, weight_decay=weight_decay, weight_decay_mask=matrices_only,
                  trust_ratio_mask=matrices_only, momentum=0.9)
  result = fit_classifier(LinearProbe(num_classes, bn_eps), tx, train_x, train_y, test_x,
                          test_y, epochs=epochs, batch_size=batch_size, seed=seed, lr_fn=lr_fn,
                          eval_batch_size=eval_batch_size, log_fn=log_fn)
  result["peak_lr"] = peak_lr
  return result
