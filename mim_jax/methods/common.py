"""Pieces that several methods share: the encoder built from `config.model`, per-token
target normalisation, similarity statistics, pixel masks and reconstruction panels."""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.models import vit


def build_encoder(config: ml_collections.ConfigDict, image_size: Optional[int] = None,
                  **overrides) -> vit.ViTEncoder:
  """The ViT encoder that `config.model` describes, at `image_size` (default
  `config.data.image_size`), which must be a multiple of the patch size; `overrides`
  replace ViTEncoder fields."""
  m = config.model
  size = config.data.image_size if image_size is None else image_size
  if size % m.patch_size:
    raise ValueError(f"config.data.image_size={size} is not divisible by "
                     f"config.model.patch_size={m.patch_size}.")
  kwargs = dict(image_size=size, patch_size=m.patch_size, width=m.width, depth=m.depth,
                num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                drop_path_rate=m.drop_path_rate, layer_scale_init=m.layer_scale_init,
                pos_embedding=m.pos_embedding, remat=m.remat,
                dtype=jnp.dtype(m.dtype), scan_layers=m.scan_layers,
                attention_impl=m.attention_impl)
  kwargs.update(overrides)
  return vit.ViTEncoder(**kwargs)


def check_mask_ratio(ratio: float, field: str = "config.method.mask_ratio") -> None:
  if not 0.0 < ratio < 1.0:
    raise ValueError(f"{field}={ratio} must be in (0, 1).")


def norm_pix_target(target: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Standardise each target token: (t − mean)/sqrt(var + eps) over the last axis, var
  unbiased (ddof=1) as torch's `.var()` in mae/models_mae.py `forward_loss`."""
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, ddof=1, keepdims=True)
  return (target - mean) / jnp.sqrt(var + eps)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖, eps) over the last axis (torch `F.normalize`)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def mean_pairwise_cosine(x: jax.Array) -> jax.Array:
  """Mean of cos(x_i, x_j) over all token pairs (i = j included) of each image and over
  the batch: [B, T, D] -> scalar (LatentMIM `avg_pairwise_sim`). 1.0 = collapsed."""
  x = l2_normalize(x.astype(jnp.float32))
  return jnp.mean(jnp.einsum("bpd,bqd->bpq", x, x))


def pixel_mask(mask: jax.Array, patch_size: int, grid_hw: Sequence[int]) -> jax.Array:
  """Patch mask [B, N] -> pixel mask [B, H, W, 1], each patch repeated p×p
  (`mask.repeat_interleave(p, 1).repeat_interleave(p, 2)` in SimMIM models/simmim.py)."""
  m = mask.reshape(mask.shape[0], grid_hw[0], grid_hw[1])  # [B, h, w]
  m = jnp.repeat(jnp.repeat(m, patch_size, axis=1), patch_size, axis=2)  # [B, H, W]
  return m[..., None]


def to_pixels(config: ml_collections.ConfigDict, images: jax.Array) -> jax.Array:
  """Normalised images -> [0, 1] pixels (undo config.data.mean/std, clip)."""
  mean = np.asarray(config.data.mean, np.float32)
  std = np.asarray(config.data.std, np.float32)
  return jnp.clip(jnp.asarray(images, jnp.float32) * std + mean, 0.0, 1.0)


def reconstruction_panel(config, images, recon, hidden_pixels) -> jax.Array:
  """original | masked | hidden pixels filled from `recon`, de-normalised to [0, 1]:
  [B, H, 3W, C]. images, recon [B, H, W, C]; hidden_pixels [B, H, W, 1] (1 = hidden)."""
  masked = images * (1 - hidden_pixels)
  filled = masked + recon.astype(images.dtype) * hidden_pixels
  return jnp.concatenate([to_pixels(config, x) for x in (images, masked, filled)], axis=2)
