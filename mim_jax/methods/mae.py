"""MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.

Follows facebookresearch/mae `models_mae.py`: random masking of 75% of patches
(`random_masking`), encoder on the visible patches + cls (`forward_encoder`), decoder
with mask tokens over all positions (`forward_decoder`), per-patch MSE on hidden patches
against (optionally per-patch standardised) pixels (`forward_loss`).
"""
from typing import Dict

import jax
import jax.numpy as jnp

from mim_jax import masking
from mim_jax.methods import common
from mim_jax.methods.base import EvalDefaults, Method
from mim_jax.models import decoders, vit


def mae_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
             norm_pix_loss: bool) -> jax.Array:
  """Mean over hidden patches of the per-patch MSE (0 when no patch is hidden).

  pred, target: [B, N, p*p*C]; mask: [B, N] with 1 = hidden.
  """
  if norm_pix_loss:
    target = common.norm_pix_target(target)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)  # [B, N]
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class MAE(Method):
  """Config: `method.mask_ratio` (0.75), `method.norm_pix_loss` (True); decoder size in
  `model.decoder_width/decoder_depth/decoder_num_heads` (512/8/16 published)."""

  eval_defaults = EvalDefaults(
      knn_pool="cls", linear_probe_pool="cls", finetune_pool="mean",
      reported=("linear_probe", "finetune"),
      source="facebookresearch/mae main_linprobe.py (--cls_token: the cls token after the "
             "final norm), main_finetune.py (global_pool)")

  def __init__(self, config, total_steps=None):
    super().__init__(config, total_steps)
    common.check_mask_ratio(config.method.mask_ratio)
    self.encoder = common.build_encoder(config)
    m = config.model
    self.patch_size = m.patch_size
    self.grid_hw = self.encoder.grid_hw
    self.num_patches = self.encoder.num_patches
    self.mask_ratio = config.method.mask_ratio
    self.norm_pix_loss = config.method.norm_pix_loss
    self.num_visible = masking.num_visible(self.num_patches, self.mask_ratio)
    self.decoder = decoders.MAEDecoder(
        grid_hw=self.grid_hw, out_dim=self.patch_size**2 * 3, width=m.decoder_width,
        depth=m.decoder_depth, num_heads=m.decoder_num_heads, mlp_ratio=m.mlp_ratio,
        remat=m.remat, dtype=jnp.dtype(m.dtype), scan_layers=m.scan_layers,
        attention_impl=m.attention_impl)

  def init(self, rng, batch):
    enc_rng, dec_rng, mask_rng = jax.random.split(rng, 3)
    images = batch["image"]
    masks = self.make_masks(mask_rng, batch)
    visible_idx, _, restore_idx = masking.mask_to_indices(masks["mask"], self.num_visible)
    enc_params = self.encoder.init(enc_rng, images, visible_idx)["params"]
    latents = self.encoder.apply({"params": enc_params}, images, visible_idx)
    dec_params = self.decoder.init(dec_rng, latents, restore_idx)["params"]
    return {"encoder": enc_params, "decoder": dec_params}

  def make_masks(self, rng, batch) -> Dict[str, jax.Array]:
    b = batch["image"].shape[0]
    return {"mask": masking.random_masking(rng, b, self.num_patches, self.mask_ratio)}

  def encode(self, params, images, mask, rng=None):
    """Encoder on the visible patches -> (latents [B, 1 + K, D], restore_idx [B, N])."""
    visible_idx, _, restore_idx = masking.mask_to_indices(mask, self.num_visible)
    deterministic = rng is None
    rngs = None if deterministic else {"dropout": rng}
    latents = self.encoder.apply({"params": params["encoder"]}, images, visible_idx,
                                 deterministic=deterministic, rngs=rngs)  # [B, 1 + K, D]
    return latents, restore_idx

  def predict(self, params, images, mask, rng=None):
    """Encoder on visible patches, decoder over all positions -> [B, N, p*p*3]."""
    latents, restore_idx = self.encode(params, images, mask, rng)
    return self.decoder.apply({"params": params["decoder"]}, latents, restore_idx)

  def loss(self, params, target_params, batch, masks, rng, step):
    images = batch["image"]  # [B, H, W, 3]
    pred = self.predict(params, images, masks["mask"], rng)  # [B, N, p*p*3]
    target = vit.patchify(images, self.patch_size)  # [B, N, p*p*3]
    loss = mae_loss(pred, target, masks["mask"], self.norm_pix_loss)
    return loss, {"mae_loss": loss}

  def summaries(self, params, batch, masks):
    """original | masked | reconstruction, de-normalised to [0, 1] pixels."""
    images = batch["image"]
    mask = masks["mask"]
    pred = self.predict(params, images, mask).astype(jnp.float32)  # [B, N, p*p*3]
    target = vit.patchify(images, self.patch_size)  # [B, N, p*p*3]
    if self.norm_pix_loss:  # undo the per-patch standardisation with the true statistics
      mean = target.mean(axis=-1, keepdims=True)
      std = jnp.sqrt(target.var(axis=-1, ddof=1, keepdims=True) + 1e-6)
      pred = pred * std + mean
    recon = vit.unpatchify(pred, self.patch_size, self.grid_hw)  # [B, H, W, 3]
    hidden = common.pixel_mask(mask, self.patch_size, self.grid_hw).astype(images.dtype)
    return {"reconstruction": common.reconstruction_panel(self.config, images, recon,
                                                          hidden)}  # [B, H, 3W, 3]
