"""Optimizer, learning-rate and momentum schedules, weight-decay masks.

Config fields (`config.optimizer`):
  base_lr, lr_scaling: lr = base_lr·batch/256 ('linear_256', MAE/Latent MIM),
    base_lr·batch/512 ('linear_512', SimMIM) or base_lr ('absolute', CAE), where batch is
    the effective batch of one optimizer step (`config.batch_size`).
  schedule: 'cosine' (warmup, then half-cosine to `min_lr`) or 'multistep' (warmup, then
    × `decay_rate` at each milestone: `decay_steps`, or `decay_epochs` when empty; SimMIM).
  min_lr, min_lr_ratio: the cosine decays to max(min_lr, min_lr_ratio·peak lr)
    (Latent MIM: ratio 0.25).
  warmup_start_ratio: the linear warmup starts at this fraction of the peak lr (0; Latent
    MIM: 0.25, its util/lr_sched.py warms up from min_lr = 0.25·lr).
  name: 'adamw' (pretraining, fine-tuning) or 'lars' (the linear probe, `lars`: trust
    coefficient 0.001, with `momentum`; neither weight decay nor the trust ratio on the
    parameters `decay_mask` exempts).
  b1, b2, eps: AdamW; momentum: LARS; weight_decay: both.
  no_decay_patterns: regexes over '/'-joined parameter paths that get no weight decay on
    top of the official rule, which exempts 1-D parameters and biases only (`decay_mask`).
  grad_clip: global-norm clipping threshold (0 disables).
  layer_decay: layer-wise lr decay (fine-tuning; 1 disables): each update is scaled by
    layer_decay^(depth + 1 − layer id), see `layer_id`.
  mu_dtype: 'float32' or 'bfloat16', AdamW's first moment or LARS's momentum (MU_DTYPES).
Steps: `config.num_train_steps` (or `num_epochs` × steps per epoch when < 0) and
`config.warmup_steps` (or `warmup_epochs` × steps per epoch when < 0).
"""
import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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
                decay_rate: float = 0.1, warmup_start_ratio: float = 0.0) -> optax.Schedule:
  """Linear warmup from warmup_start_ratio·peak_lr (LatentMIM util/lr_sched.py starts at
  its min_lr; MAE at 0) to peak_lr, then per step either a half-cosine from peak_lr to
  min_lr ('cosine': mae/util/lr_sched.py `adjust_learning_rate`, applied per iteration)
  or peak_lr·decay_rate^(number of `decay_steps` milestones ≤ step) ('multistep': SimMIM
  lr_scheduler.py `MultiStepLRScheduler`). Step `warmup_steps` is the first at peak_lr; the
  cosine ends at min_lr on step max(total_steps, warmup_steps + 1) and stays there. After
  the warmup the schedules are optax's, joined to it by `optax.join_schedules`."""
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown config.optimizer.schedule={schedule!r}; choose one of "
                     f"{SCHEDULES}.")
  if schedule == "multistep" and any(m < warmup_steps for m in decay_steps):
    raise ValueError(f"lr decay milestones {tuple(decay_steps)} must not fall inside the "
                     f"{warmup_steps} warmup steps.")
  if not 0.0 <= warmup_start_ratio <= 1.0:
    raise ValueError(f"config.optimizer.warmup_start_ratio={warmup_start_ratio} must be in "
                     "[0, 1] (the warmup's first lr as a fraction of the peak).")
  warm_start = warmup_start_ratio * peak_lr

  def warmup(step):  # optax.linear_schedule's (start − peak)·(1 − t/T) + peak would round
    # a small start (SimMIM: 5e-7 per 512 images) to ulps of the peak
    return warm_start + (peak_lr - warm_start) * step / max(warmup_steps, 1)

  if schedule == "cosine":
    cosine = optax.cosine_decay_schedule(peak_lr - min_lr, max(total_steps - warmup_steps, 1))
    after_warmup = lambda step: min_lr + cosine(step)  # noqa: E731  (any peak_lr, 0 too)
  else:
    scales = {}  # milestone, counted from the warmup's end -> its decay (repeats compound)
    for m in decay_steps:
      scales[m - warmup_steps] = scales.get(m - warmup_steps, 1.0) * decay_rate
    after_warmup = optax.piecewise_constant_schedule(peak_lr, scales)
  schedule_fn = optax.join_schedules([warmup, after_warmup], [warmup_steps])
  return lambda step: schedule_fn(jnp.asarray(step, jnp.float32))


def lr_schedule_from_config(config, peak_lr: float, total_steps: int, warmup_steps: int,
                            steps_per_epoch: int) -> optax.Schedule:
  """`lr_schedule` as `config.optimizer` describes it (milestones: `decay_steps`, or
  `decay_epochs` × steps per epoch when `decay_steps` is empty)."""
  opt = config.optimizer
  milestones = opt.decay_steps or [steps_from_epochs(-1, e, steps_per_epoch)
                                   for e in opt.decay_epochs]
  min_lr = max(opt.min_lr, opt.get("min_lr_ratio", 0.0) * peak_lr)
  return lr_schedule(peak_lr, total_steps, warmup_steps, min_lr, opt.schedule, milestones,
                     opt.decay_rate, opt.get("warmup_start_ratio", 0.0))


def cosine_momentum(step, total_steps: int, base: float, final: float = 1.0) -> jax.Array:
  """EMA momentum rising from `base` to `final` on a half-cosine, per step:
  m = final − (final − base)·(1 + cos(π·t/T))/2 (BYOL; Latent MIM, PCAE)."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return final - (final - base) * (1.0 + jnp.cos(math.pi * t)) / 2.0


def global_norm(tree: PyTree) -> jax.Array:
  """The L2 norm of all leaves (`optax.tree.norm`), with the vectors and scalars (biases,
  LayerNorm parameters) stacked by shape and dtype first: one reduction per group instead
  of one per leaf; matrices keep one each. On a TPU every small reduction is a fusion
  with a fixed cost: MAE ViT-L has 396 leaves, 263 of them vectors in 7 groups, and the
  step on v5e-256 is 0.3 ms shorter (docs/RESULTS.md, "MAE ViT-L/16 on v5e: what moved
  the estimated step"; stacking the matrices too costs more in copies than it saves)."""
  groups, squares = {}, []
  for leaf in jax.tree.leaves(tree):
    if jnp.ndim(leaf) > 1:
      squares.append(jnp.sum(jnp.square(leaf)))
    else:
      groups.setdefault((jnp.shape(leaf), jnp.result_type(leaf)), []).append(leaf)
  squares += [jnp.sum(jnp.square(jnp.stack(group))) for group in groups.values()]
  return jnp.sqrt(sum(squares))


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


_STACKED_PATH = re.compile(r"blocks/layers/")  # nn.scan-ned blocks: a leading [depth] axis


def decay_mask(params: PyTree, no_decay_patterns: Sequence[str] = ()) -> PyTree:
  """True where weight decay applies. The official rule (timm `add_weight_decay` /
  `param_groups_weight_decay` as mae/main_pretrain.py uses it; CAE furnace/optim_factory.py
  and SimMIM optimizer.py alike): no decay on 1-D parameters (norm scales, LayerScale)
  and biases, decay on everything else, cls and mask tokens included. A parameter
  whose '/'-joined path matches one of `no_decay_patterns` is exempt too (a method's own
  skip list). Blocks stacked by `model.scan_layers` count their per-layer rank."""
  compiled = [re.compile(p) for p in no_decay_patterns]

  def decays(path, leaf):
    name = path_name(path)
    ndim = len(np.shape(leaf)) - (1 if _STACKED_PATH.search(name) else 0)
    return not (ndim <= 1 or name.endswith("bias") or any(c.search(name) for c in compiled))
  return jax.tree_util.tree_map_with_path(decays, params)


_EMBEDDING_PATH = re.compile(r"(^|/)(patch_embed|cls_token|mask_token|pos_embed)(/|$)")
_BLOCK_PATH = re.compile(r"(^|/)blocks_(\d+)(/|$)")
_SCANNED_PATH = re.compile(r"(^|/)blocks/layers(/|$)")


def layer_id(path: str, depth: int) -> int:
  """Layer of a '/'-joined ViT parameter path for layer-wise lr decay
  (mae/util/lr_decay.py `get_layer_id_for_vit`, from BEiT optim_factory.py): patch
  embedding and cls/mask/position tokens 0, block i i + 1, everything else (final norm,
  fc_norm, head, shared relative position bias) depth + 1."""
  if _EMBEDDING_PATH.search(path):
    return 0
  block = _BLOCK_PATH.search(path)
  return int(block.group(2)) + 1 if block else depth + 1


def layer_decay_multipliers(params: PyTree, decay: float, depth: int) -> PyTree:
  """decay^(depth + 1 − layer id) per parameter: the lr scale of each layer
  (mae/util/lr_decay.py `param_groups_lrd`, num_layers = depth + 1). Blocks stacked on a
  leading [depth] axis ('blocks/layers', `model.scan_layers`) get one scale per slice."""
  def multiplier(path, leaf):
    name = path_name(path)
    if _SCANNED_PATH.search(name):
      scales = decay ** (depth - np.arange(depth, dtype=np.float64))  # layer ids 1..depth
      return scales.astype(np.float32).reshape((depth,) + (1,) * (len(leaf.shape) - 1))
    return float(decay ** (depth + 1 - layer_id(name, depth)))
  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_layer_decay(decay: float, depth: int) -> optax.GradientTransformation:
  """Multiply each parameter's update by its `layer_decay_multipliers` entry. Placed after
  AdamW this scales lr and decoupled weight decay together, as a per-group lr does."""
  def update_fn(updates, state, params=None):
    del params
    multipliers = layer_decay_multipliers(updates, decay, depth)
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


OPTIMIZERS = ("adamw", "lars")
# config.optimizer.mu_dtype: the dtype of AdamW's first moment or LARS's momentum buffer
# (optax's mu_dtype / accumulator_dtype); bfloat16 halves its memory and traffic, AdamW's
# second moment stays float32 (MaxText's `mu_dtype`)
MU_DTYPES = ("float32", "bfloat16")


def lars(lr: Callable, weight_decay: float, momentum: float, mask: Callable,
         trust_coefficient: float = 0.001, mu_dtype: str = "float32"
         ) -> optax.GradientTransformation:
  """LARS as mae/util/lars.py: where `mask` is True, d = g + wd·p scaled by the trust
  ratio η‖p‖/‖d‖ (1 where either norm is 0); then μ ← momentum·μ + d and p ← p − lr·μ.
  The lr multiplies the momentum buffer (optax.lars puts it inside the buffer, which
  differs whenever the lr changes: warmup, cosine)."""
  trust_ratio = optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.masked(trust_ratio, mask),
                     optax.trace(decay=momentum, accumulator_dtype=mu_dtype),
                     optax.scale_by_learning_rate(lr))


def create_optimizer(config, lr: Callable) -> optax.GradientTransformation:
  opt = config.optimizer
  name = opt.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown config.optimizer.name={name!r}; choose one of {OPTIMIZERS}.")
  mask = lambda p: decay_mask(p, opt.no_decay_patterns)  # noqa: E731
  mu_dtype = opt.get("mu_dtype", "float32")
  if mu_dtype not in MU_DTYPES:
    raise ValueError(f"config.optimizer.mu_dtype={mu_dtype!r}: choose one of {MU_DTYPES}.")
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  if name == "lars":
    chain.append(lars(lr, opt.weight_decay, opt.momentum, mask, mu_dtype=mu_dtype))
  else:
    chain.append(optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=mask, mu_dtype=mu_dtype))
  layer_decay = opt.get("layer_decay", 1.0)
  if layer_decay != 1.0:
    if not 0.0 < layer_decay < 1.0:
      raise ValueError(f"config.optimizer.layer_decay={layer_decay} must be in (0, 1] "
                       "(1 disables layer-wise lr decay).")
    chain.append(scale_by_layer_decay(layer_decay, config.model.depth))
  return optax.chain(*chain)
