"""Mixup, CutMix and label smoothing on device, as pure functions of a key.

Follows timm `timm/data/mixup.py` (`Mixup` in 'batch' mode, as MAE's main_finetune.py
uses it): one λ per batch; example i is mixed with example B − 1 − i (the batch
reversed); with both mixup and cutmix on, cutmix is chosen with probability
`switch_prob`, and λ ~ Beta(α, α) of the chosen one; cutmix pastes one box whose sides
are int(side·√(1 − λ)) centred uniformly in the image and clipped to it, and λ becomes
the kept area fraction (`correct_lam`); targets are label-smoothed one-hots
(off = s/C, on = 1 − s + s/C) mixed with the same λ.
"""
from typing import Tuple

import jax
import jax.numpy as jnp


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """[B] int -> [B, C]: 1 − s + s/C at the label, s/C elsewhere (timm `one_hot`)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mix_targets(labels: jax.Array, num_classes: int, lam: jax.Array,
                smoothing: float) -> jax.Array:
  """λ·y + (1 − λ)·reverse(y) of the smoothed one-hots [B, C] (timm `mixup_target`)."""
  y = smooth_one_hot(labels, num_classes, smoothing)
  return lam * y + (1.0 - lam) * y[::-1]


def cutmix_box(rng: jax.Array, height: int, width: int,
               lam: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(y0, y1, x0, x1) of timm `rand_bbox`: cut sides int(side·√(1 − λ)), centre uniform
  over the pixels, corners centre ∓ cut // 2 clipped to the image."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  y_rng, x_rng = jax.random.split(rng)
  cy = jax.random.randint(y_rng, (), 0, height)
  cx = jax.random.randint(x_rng, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return y0, y1, x0, x1


def box_mask(box, height: int, width: int) -> jax.Array:
  """[H, W] bool, True inside the half-open box (y0, y1, x0, x1)."""
  y0, y1, x0, x1 = box
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def mixup_cutmix(rng: jax.Array, images: jax.Array, labels: jax.Array, *, num_classes: int,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1
                 ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(mixed images [B, H, W, C], soft targets [B, C], λ) for one batch.

  With probability `prob` the batch is mixed (else λ = 1 and only smoothing applies);
  an α of 0 turns that kind of mixing off.
  """
  if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
    raise ValueError(f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha} must be >= 0 "
                     f"and prob={prob}, switch_prob={switch_prob} in [0, 1].")
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, smooth_one_hot(labels, num_classes, smoothing), jnp.ones((), jnp.float32)
  switch_rng, apply_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 5)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_rng) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  beta = lambda key, alpha: jax.random.beta(key, alpha, alpha) if alpha > 0 else 1.0
  lam_mixup, lam_cutmix = beta(mixup_rng, mixup_alpha), beta(cutmix_rng, cutmix_alpha)
  lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup)
  lam = jnp.where(jax.random.uniform(apply_rng) < prob, lam, 1.0).astype(jnp.float32)

  _, height, width, _ = images.shape
  box = cutmix_box(box_rng, height, width, lam)
  inside = box_mask(box, height, width)[None, :, :, None]  # [1, H, W, 1]
  flipped = images[::-1]
  cut = jnp.where(inside, flipped, images)
  blended = lam.astype(images.dtype) * images + (1.0 - lam).astype(images.dtype) * flipped
  y0, y1, x0, x1 = box
  lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  images = jnp.where(use_cutmix, cut, blended)
  lam = jnp.where(use_cutmix, lam_cut, lam)
  return images, mix_targets(labels, num_classes, lam, smoothing), lam
