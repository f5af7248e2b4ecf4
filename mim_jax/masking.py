"""Mask generators: pure functions of an rng key. Masks are [B, N] with 1 = hidden.

Every method draws its masks here and passes them into its loss, so any loss can be
evaluated for a given, explicit mask.
"""
import math
from typing import Optional, Sequence

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


def simmim_masking(key: jax.Array, batch_size: int, image_size: int, mask_patch_size: int,
                   model_patch_size: int, mask_ratio: float) -> jax.Array:
  """SimMIM masks (SimMIM data/data_simmim.py `MaskGenerator`): ceil(cells·ratio) of the
  (image_size / mask_patch_size)² cells hidden uniformly at random, each cell expanded to
  the (mask_patch_size / model_patch_size)² model patches it covers. float32 [B, N]."""
  if image_size % mask_patch_size or mask_patch_size % model_patch_size:
    raise ValueError(f"SimMIM masking needs image_size ({image_size}) divisible by "
                     f"mask_patch_size ({mask_patch_size}) and mask_patch_size divisible by "
                     f"the model patch size ({model_patch_size}).")
  side = image_size // mask_patch_size
  scale = mask_patch_size // model_patch_size
  cells = side * side
  num_hidden = int(math.ceil(cells * mask_ratio))
  mask = random_split(key, batch_size, cells, cells - num_hidden)  # [B, cells]
  mask = mask.reshape(batch_size, side, 1, side, 1)
  mask = jnp.broadcast_to(mask, (batch_size, side, scale, side, scale))  # [B, r, s, r, s]
  return mask.reshape(batch_size, cells * scale * scale)  # [B, N]


def sample_block(key: jax.Array, grid_hw: Sequence[int], max_mask_patches: jax.Array,
                 min_num_patches: int, min_aspect: float, max_aspect: float):
  """One attempt of BEiT's block generator (Atten4Vis/CAE furnace/masking_generator.py
  `MaskingGenerator._mask`): area ~ U(min_num_patches, max_mask_patches), aspect r
  log-uniform in (min_aspect, max_aspect), h = round(√(area·r)), w = round(√(area/r)),
  top ∈ {0..H−h}, left ∈ {0..W−w}. Returns int32 (top, left, h, w); the block is usable
  only when h < H and w < W."""
  gh, gw = grid_hw
  k_area, k_aspect, k_top, k_left = jax.random.split(key, 4)
  area = min_num_patches + (max_mask_patches - min_num_patches) * jax.random.uniform(k_area)
  aspect = jnp.exp(jax.random.uniform(k_aspect, minval=math.log(min_aspect),
                                      maxval=math.log(max_aspect)))
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # half to even, as Python round
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  top = jax.random.randint(k_top, (), 0, jnp.maximum(gh - h + 1, 1))
  left = jax.random.randint(k_left, (), 0, jnp.maximum(gw - w + 1, 1))
  return top, left, h, w


def block_masking(key: jax.Array, batch_size: int, grid_hw: Sequence[int],
                  num_masking_patches: int, min_num_patches: int = 16,
                  max_num_patches: Optional[int] = None, min_aspect: float = 0.3,
                  max_aspect: Optional[float] = None) -> jax.Array:
  """BEiT block-wise masks as CAE uses them (furnace/masking_generator.py
  `MaskingGenerator.__call__`): place `sample_block` rectangles, keeping one only when it
  hides between 1 and min(remaining, max_num_patches) new patches, until exactly
  `num_masking_patches` are hidden. A `lax.while_loop` per sample (the official 10-attempt
  inner loop is the same sequence of independent attempts), vmapped over the batch, so it
  runs inside a jitted step. float32 [B, N] with exactly `num_masking_patches` ones."""
  gh, gw = grid_hw
  if not 0 < num_masking_patches < gh * gw:
    raise ValueError(f"num_masking_patches={num_masking_patches} must be in (0, {gh * gw}).")
  max_num = num_masking_patches if max_num_patches is None else max_num_patches
  max_aspect = max_aspect or 1.0 / min_aspect
  rows = jnp.arange(gh)[:, None]  # [H, 1]
  cols = jnp.arange(gw)[None, :]  # [1, W]

  def attempt(state):
    mask, count, key = state
    key, sub = jax.random.split(key)
    max_mask = jnp.minimum(num_masking_patches - count, max_num)
    top, left, h, w = sample_block(sub, grid_hw, max_mask.astype(jnp.float32),
                                   min_num_patches, min_aspect, max_aspect)
    block = ((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w))  # [H, W]
    new = jnp.sum(block & ~mask)
    accept = (h < gh) & (w < gw) & (new > 0) & (new <= max_mask)
    return (jnp.where(accept, mask | block, mask), count + jnp.where(accept, new, 0), key)

  def one(key):
    init = (jnp.zeros((gh, gw), bool), jnp.zeros((), jnp.int32), key)
    mask, _, _ = jax.lax.while_loop(lambda s: s[1] < num_masking_patches, attempt, init)
    return mask.reshape(-1).astype(jnp.float32)  # [N]

  return jax.vmap(one)(jax.random.split(key, batch_size))  # [B, N]
