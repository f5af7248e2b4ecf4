"""SimMIM: Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022.

Follows microsoft/SimMIM: random masking of coarse mask_patch_size cells
(data/data_simmim.py `MaskGenerator`); a ViT that sees every patch, with the embeddings of
hidden patches replaced by a learned mask token (models/simmim.py
`VisionTransformerForSimMIM.forward`); a linear per-token head to p²·3 pixels (the 1×1
conv + PixelShuffle `SimMIM.decoder`); an L1 loss on the hidden pixels of the normalised
image (`SimMIM.forward`).
"""
import dataclasses
from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax import masking
from mim_jax.methods import common
from mim_jax.methods.base import EvalDefaults, Method
from mim_jax.models import vit


def simmim_loss(images: jax.Array, recon: jax.Array, mask: jax.Array,
                patch_size: int) -> jax.Array:
  """sum(|x − x̂|·m) / (sum(m) + 1e-5) / C with m the hidden-pixel mask, summed over the
  batch (models/simmim.py `SimMIM.forward`). images, recon [B, H, W, C]; mask [B, N]."""
  b, h, w, c = images.shape
  m = common.pixel_mask(mask, patch_size, (h // patch_size, w // patch_size))  # [B, H, W, 1]
  l1 = jnp.abs(images.astype(jnp.float32) - recon.astype(jnp.float32))  # [B, H, W, C]
  return jnp.sum(l1 * m) / (jnp.sum(m) + 1e-5) / c


class SimMIM(Method):
  """Config: `method.mask_patch_size` (32), `method.mask_ratio` (0.6); encoder options
  `model.layer_scale_init` (0.1 published) and `model.pos_embedding` ('shared_rel_bias'
  published, 'sincos' otherwise). Params: {'encoder', 'decoder'} (the linear head)."""

  eval_defaults = EvalDefaults(
      knn_pool="mean", linear_probe_pool="mean", finetune_pool="mean", block_fraction=8 / 12,
      reported=("linear_probe", "finetune"),
      source="microsoft/SimMIM issue #14 (linear probe: block 8 of 12, the mean of the patch "
             "tokens; no probe code released), configs/vit_base__800ep/"
             "simmim_finetune__vit_base__img224__800ep.yaml (USE_MEAN_POOLING)")

  @classmethod
  def shrink_config(cls, config, old_patch_size, old_depth, resize_data):
    """Mask cells keep their size in patches."""
    config.method.mask_patch_size = (config.method.mask_patch_size * config.model.patch_size
                                     // old_patch_size)

  def __init__(self, config, total_steps=None):
    super().__init__(config, total_steps)
    common.check_mask_ratio(config.method.mask_ratio)
    m = config.model
    self.encoder = common.build_encoder(config, use_mask_token=True)
    self.patch_size = m.patch_size
    self.grid_hw = self.encoder.grid_hw
    self.mask_patch_size = config.method.mask_patch_size
    self.mask_ratio = config.method.mask_ratio
    self.head = nn.Dense(self.patch_size**2 * 3, dtype=jnp.dtype(m.dtype),
                         kernel_init=vit.xavier_uniform)

  def init(self, rng, batch):
    enc_rng, head_rng, mask_rng = jax.random.split(rng, 3)
    images = batch["image"]
    mask = self.make_masks(mask_rng, batch)["mask"]
    enc_params = self.encoder.init(enc_rng, images, token_mask=mask)["params"]
    latents = self.encoder.apply({"params": enc_params}, images, token_mask=mask)
    head_params = self.head.init(head_rng, latents[:, 1:])["params"]
    return {"encoder": enc_params, "decoder": head_params}

  def make_masks(self, rng, batch) -> Dict[str, jax.Array]:
    b, size = batch["image"].shape[:2]
    return {"mask": masking.simmim_masking(rng, b, size, self.mask_patch_size,
                                           self.patch_size, self.mask_ratio)}

  def reconstruct(self, params, images, mask, rng=None):
    """Encoder on all patches (hidden ones as the mask token), head per patch token ->
    the predicted image [B, H, W, 3]."""
    deterministic = rng is None
    rngs = None if deterministic else {"dropout": rng}
    latents = self.encoder.apply({"params": params["encoder"]}, images, token_mask=mask,
                                 deterministic=deterministic, rngs=rngs)  # [B, 1 + N, D]
    patches = self.head.apply({"params": params["decoder"]}, latents[:, 1:])  # [B, N, p*p*3]
    return vit.unpatchify(patches, self.patch_size, self.grid_hw)  # [B, H, W, 3]

  def loss(self, params, target_params, batch, masks, rng, step):
    images = batch["image"]  # [B, H, W, 3]
    recon = self.reconstruct(params, images, masks["mask"], rng)  # [B, H, W, 3]
    loss = simmim_loss(images, recon, masks["mask"], self.patch_size)
    return loss, {"simmim_loss": loss}

  def summaries(self, params, batch, masks):
    images = batch["image"]
    recon = self.reconstruct(params, images, masks["mask"])
    hidden = common.pixel_mask(masks["mask"], self.patch_size,
                               self.grid_hw).astype(images.dtype)
    return {"reconstruction": common.reconstruction_panel(self.config, images, recon, hidden)}

  def eval_encoder(self, use_target=False, image_size=None, **module_fields):
    """The encoder without its mask token: evaluation never hides patches."""
    encoder = super().eval_encoder(use_target, image_size, **module_fields)
    return dataclasses.replace(encoder, exclude=("mask_token",))
