"""Optimizer, learning-rate and momentum schedules, weight-decay masks.

Config fields (`config.optimizer`):
  base_lr, lr_scaling: lr = base_lr·batch/256 ('linear_256', MAE/Latent MIM),
    base_lr·batch/512 ('linear_512', SimMIM) or base_lr ('absolute', CAE), where batch is
    the effective batch of one optimizer step (`config.batch_size`).
  schedule: 'cosine' (warmup, then half-cosine to `min_lr`) or 'multistep' (warmup, then
    × `decay_rate` at each milestone: `decay_steps`, or `decay_epochs` when empty; SimMIM).
  min_lr, min_lr_ratio: the cosine decays to max(min_lr, min_lr_ratio·peak lr)
    (Latent MIM: ratio 0.25).
  b1, b2, eps, weight_decay: AdamW.
  no_decay_patterns: regexes over '/'-joined parameter paths that get no weight decay.
  grad_clip: global-norm clipping threshold (0 disables).
Steps: `config.num_train_steps` (or `num_epochs` × steps per epoch when < 0) and
`config.warmup_steps` (or `warmup_epochs` × steps per epoch when < 0).
"""
import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

PyTree = Any

LR_SCALING = {"linear_256": 256.0, "linear_512": 512.0, "absolute": None}
SCHEDULES = ("cosine", "multistep")


def scaled_lr(base_lr: float, lr_scaling: str, batch_size: int) -> float:
  """Peak learning rate from the base lr and the method's scaling rule."""
  if lr_scaling not in LR_SCALING:
    raise ValueError(f"Unknown config.optimizer.lr_scaling={lr_scaling!r}; choose one of "
                     f"{sorted(LR_SCALING)}.")
  per = LR_SCALING[lr_scaling]
  return base_lr if per is None else base_lr * batch_size / per


def steps_from_epochs(steps: int, epochs: float, steps_per_epoch: int) -> int:
  """`steps` when given (>= 0), else round(epochs × steps_per_epoch)."""
  return int(steps) if steps >= 0 else int(round(epochs * steps_per_epoch))


def lr_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                min_lr: float = 0.0, schedule: str = "cosine", decay_steps: Sequence[int] = (),
                decay_rate: float = 0.1) -> optax.Schedule:
  """Linear warmup from 0, then per step either a half-cosine from peak_lr to min_lr
  ('cosine': mae/util/lr_sched.py `adjust_learning_rate`, applied per iteration) or
  peak_lr·decay_rate^(number of `decay_steps` milestones ≤ step) ('multistep': SimMIM
  lr_scheduler.py `MultiStepLRScheduler`)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown config.optimizer.schedule={schedule!r}; choose one of "
                     f"{SCHEDULES}.")
  if schedule == "multistep" and any(m < warmup_steps for m in decay_steps):
    raise ValueError(f"lr decay milestones {tuple(decay_steps)} must not fall inside the "
                     f"{warmup_steps} warmup steps.")
  milestones = jnp.asarray(sorted(decay_steps), jnp.float32)

  def schedule_fn(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1)
    if schedule == "multistep":
      after = peak_lr * decay_rate ** jnp.sum(milestones <= step)
    else:
      progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
      progress = jnp.clip(progress, 0.0, 1.0)
      after = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup_steps, warm, after)
  return schedule_fn


def lr_schedule_from_config(config, peak_lr: float, total_steps: int, warmup_steps: int,
                            steps_per_epoch: int) -> optax.Schedule:
  """`lr_schedule` as `config.optimizer` describes it (milestones: `decay_steps`, or
  `decay_epochs` × steps per epoch when `decay_steps` is empty)."""
  opt = config.optimizer
  milestones = opt.decay_steps or [steps_from_epochs(-1, e, steps_per_epoch)
                                   for e in opt.decay_epochs]
  min_lr = max(opt.min_lr, opt.get("min_lr_ratio", 0.0) * peak_lr)
  return lr_schedule(peak_lr, total_steps, warmup_steps, min_lr, opt.schedule, milestones,
                     opt.decay_rate)


def cosine_momentum(step, total_steps: int, base: float, final: float = 1.0) -> jax.Array:
  """EMA momentum rising from `base` to `final` on a half-cosine, per step:
  m = final − (final − base)·(1 + cos(π·t/T))/2 (BYOL; Latent MIM, PCAE)."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return final - (final - base) * (1.0 + jnp.cos(math.pi * t)) / 2.0


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def decay_mask(params: PyTree, no_decay_patterns: Sequence[str]) -> PyTree:
  """True where weight decay applies: every parameter whose path matches none of the
  patterns (default: biases, norm scales, LayerScale, cls/mask/position tokens)."""
  compiled = [re.compile(p) for p in no_decay_patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(c.search(path_name(path)) for c in compiled), params)


def create_optimizer(config, lr: Callable) -> optax.GradientTransformation:
  opt = config.optimizer
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  chain.append(optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay,
                           mask=lambda p: decay_mask(p, opt.no_decay_patterns)))
  return optax.chain(*chain)
