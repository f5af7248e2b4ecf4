"""Mask generators: pure functions of an rng key. Masks are [B, N] with 1 = hidden.

Every method draws its masks here and passes them into its loss, so any loss can be
evaluated for a given, explicit mask.
"""
from typing import Sequence

import jax
import jax.numpy as jnp


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Tokens kept by MAE-style masking: int(N·(1 − ratio)) (mae/models_mae.py)."""
  return int(num_patches * (1 - mask_ratio))


def random_masking(key: jax.Array, batch_size: int, num_patches: int,
                   mask_ratio: float) -> jax.Array:
  """Per-sample uniform random masking (MAE): argsort of uniform noise, keep the first
  int(N·(1 − ratio)) positions. Returns float32 [B, N], exactly N − K ones per row."""
  return random_split(key, batch_size, num_patches, num_visible(num_patches, mask_ratio))


def random_split(key: jax.Array, batch_size: int, num_patches: int,
                 num_keep: int) -> jax.Array:
  """Per-sample uniformly random split by count: float32 [B, N] mask with exactly
  `num_keep` zeros (visible) and N − num_keep ones (hidden) per row."""
  noise = jax.random.uniform(key, (batch_size, num_patches))  # [B, N]
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # [B, N] rank of each position
  return (rank >= num_keep).astype(jnp.float32)


def mask_to_indices(mask: jax.Array, num_keep: int):
  """Split positions by a mask with exactly `num_keep` zeros per row.

  Returns (visible_idx [B, K] in ascending position order, hidden_idx [B, N − K] in
  ascending order, restore_idx [B, N]) where restore_idx maps each position to its index
  in the sequence [visible..., hidden...] (mae/models_mae.py `ids_restore`).
  """
  order = jnp.argsort(mask, axis=1, stable=True)  # [B, N] visible first, then hidden
  restore_idx = jnp.argsort(order, axis=1)  # [B, N]
  return order[:, :num_keep], order[:, num_keep:], restore_idx


def grid_gap_offsets(key: jax.Array, batch_size: int, grid_hw: Sequence[int],
                     gap: int) -> jax.Array:
  """Where each patch window starts inside its (p + gap)² cell: int32 [B, gh, gw, 2] as
  (row, col), uniform in [0, gap) as torch.randint(0, gap) in LatentMIM `vits.py`
  `Patchify.patchify`, so windows of neighbouring cells never touch. Zeros for gap 0."""
  shape = (batch_size, grid_hw[0], grid_hw[1], 2)
  if gap == 0:
    return jnp.zeros(shape, jnp.int32)
  return jax.random.randint(key, shape, 0, gap, dtype=jnp.int32)


def grid_gap_crop(images: jax.Array, offsets: jax.Array, patch_size: int,
                  gap: int) -> jax.Array:
  """Non-contiguous grid (Latent MIM): cut [B, g·(p + gap), g·(p + gap), C] images into
  (p + gap)² cells and take the p×p window at `offsets` [B, gh, gw, 2] from each; the
  windows are packed side by side into [B, gh·p, gw·p, C], whose `patchify` is the
  sampled patch sequence (LatentMIM `vits.py` `Patchify.patchify`)."""
  b, h, w, c = images.shape
  p, cell = patch_size, patch_size + gap
  gh, gw = h // cell, w // cell
  x = images.reshape(b, gh, cell, gw, cell, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, gh, gw, cell, cell, C]
  rows = offsets[..., 0, None] + jnp.arange(p)  # [B, gh, gw, p]
  cols = offsets[..., 1, None] + jnp.arange(p)  # [B, gh, gw, p]
  x = jnp.take_along_axis(x, rows[..., :, None, None], axis=3)  # [B, gh, gw, p, cell, C]
  x = jnp.take_along_axis(x, cols[..., None, :, None], axis=4)  # [B, gh, gw, p, p, C]
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
