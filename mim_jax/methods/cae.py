"""CAE: Chen et al., "Context Autoencoder for Self-Supervised Representation Learning",
IJCV 2023.

Follows Atten4Vis/CAE: BEiT block-wise masking (furnace/masking_generator.py); encoder F
on the visible patches (models/modeling_cae_helper.py `VisionTransformerEncoder`); latent
context regressor H and decoder G over the hidden patches only (models/modeling_cae.py
`ContextAutoencoderViT.forward`); alignment target F(hidden patches) computed by the same
encoder weights under stop-gradient (the official `alignment_encoder` shares the encoder's
storage, i.e. momentum 0); loss = reconstruction + λ·MSE(H output, target)
(furnace/engine_for_pretraining.py).

Reconstruction targets are pluggable (`method.target`): 'pixels' (default; per-patch
normalised pixels, MSE: the paper's pixel variant, Table 8) or 'tokenizer' (ids of a
frozen tokenizer such as DALL-E's dVAE, cross-entropy: the published recipe). A target
has `out_dim`, `__call__(images) -> per-patch targets [B, N, ...]` and
`loss(pred [B, M, out_dim], hidden targets [B, M, ...]) -> (loss, metrics)`.
"""
import functools
import importlib
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import optax

from mim_jax import masking
from mim_jax.methods import common
from mim_jax.methods.base import Claim, EvalDefaults, Method
from mim_jax.models import cae as cae_models
from mim_jax.models import vit

TARGETS = ("pixels", "tokenizer")


class PixelTarget:
  """Each patch's pixels [B, N, p²·3], standardised per patch when `norm_pix` (MAE's
  norm_pix_loss); MSE over the hidden patches' values."""

  def __init__(self, patch_size: int, norm_pix: bool):
    self.patch_size = patch_size
    self.norm_pix = norm_pix
    self.out_dim = patch_size**2 * 3

  def __call__(self, images):
    target = vit.patchify(images.astype(jnp.float32), self.patch_size)  # [B, N, p*p*3]
    return common.norm_pix_target(target) if self.norm_pix else target

  def loss(self, pred, target):
    return jnp.mean((pred.astype(jnp.float32) - target) ** 2), {}


class TokenizerTarget:
  """Ids of a frozen image tokenizer; cross-entropy over `vocab_size` classes, mean over
  hidden patches, and the accuracy as `mlm_acc` (engine_for_pretraining.py).

  `tokenize(images) -> ids`: images are the normalised [B, H, W, 3] batch the encoder sees;
  ids are ints [B, N] on the model's row-major patch grid. It runs inside the jitted step,
  under stop-gradient. For DALL-E's dVAE (the official recipe) it undoes the
  normalisation, resizes to H/2 px (Lanczos), applies DALL-E's `map_pixels` and takes the
  argmax of the dVAE encoder's logits on its 8×-downsampled grid.
  """

  def __init__(self, spec: str, vocab_size: int):
    if ":" not in spec:
      raise ValueError("config.method.target='tokenizer' needs config.method.tokenizer="
                       "'package.module:function' naming tokenize(images) -> ids [B, N].")
    self.spec = spec
    self.out_dim = vocab_size

  @functools.cached_property
  def tokenize(self) -> Callable[[jax.Array], jax.Array]:
    """The function `config.method.tokenizer` names, imported when first used: by a
    training run (CAE.__init__ with total_steps), never by a run read back for
    evaluation, export or inspection (a received config.json is data, not code)."""
    module, name = self.spec.split(":")
    return getattr(importlib.import_module(module), name)

  def __call__(self, images):
    return jax.lax.stop_gradient(self.tokenize(images)).astype(jnp.int32)  # [B, N]

  def loss(self, logits, ids):
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids).mean()
    return ce, {"mlm_acc": jnp.mean(jnp.argmax(logits, axis=-1) == ids)}


def make_target(config):
  """The reconstruction target `config.method.target` names."""
  meth = config.method
  if meth.target == "pixels":
    return PixelTarget(config.model.patch_size, meth.norm_pix_loss)
  if meth.target == "tokenizer":
    return TokenizerTarget(meth.tokenizer or "", meth.vocab_size)
  raise ValueError(f"Unknown config.method.target={meth.target!r}; choose one of {TARGETS}.")


def alignment_loss(predicted, target):
  """MSE averaged over hidden patches and channels (F.mse_loss, reduction='mean')."""
  return jnp.mean((predicted.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


class CAE(Method):
  """Config: `method.mask_ratio` (0.5: 98 of 196 hidden), `method.min_block_patches` (16),
  `method.min_aspect` (0.3), `method.align_weight` (λ = 2), `method.target`,
  `method.norm_pix_loss`, `method.tokenizer`, `method.vocab_size`; regressor/decoder in
  `model.regressor_depth`, `model.decoder_depth`, `model.decoder_width`,
  `model.decoder_num_heads`, `model.decoder_layer_scale_init` (4, 4, 768, 12, 0.1).
  Params: {'encoder', 'regressor', 'decoder'}; no EMA targets."""

  eval_defaults = EvalDefaults(
      knn_pool="cls", linear_probe_pool="cls", finetune_pool="mean",
      reported=("linear_probe", "attentive_probe", "finetune"),
      source="Atten4Vis/CAE scripts/cae_base_800e.sh (tools/run_linear.py and "
             "run_attentive.py --use_cls: the cls token, all tokens, after the final "
             "norm), scripts/cae_base_finetune.sh (mean pooling)")
  claims = (Claim("mae", "linear_probe", "linear probe 71.4 against MAE's 68.0, ViT-B/16, "
                  "1600 epochs (Chen et al. 2023 Table 1, as Multi-View MAE's linear-probing "
                  "table quotes it)"),)

  @classmethod
  def shrink_config(cls, config, old_patch_size, old_depth, resize_data):
    """A block of hidden patches is at most a quarter of the smaller grid."""
    grid = config.data.image_size // config.model.patch_size
    config.method.min_block_patches = min(config.method.min_block_patches, grid * grid // 4)

  def __init__(self, config, total_steps=None):
    super().__init__(config, total_steps)
    m, meth = config.model, config.method
    common.check_mask_ratio(meth.mask_ratio)
    self.encoder = common.build_encoder(config)
    self.grid_hw = self.encoder.grid_hw
    self.num_visible = masking.num_visible(self.encoder.num_patches, meth.mask_ratio)
    self.num_masking = self.encoder.num_patches - self.num_visible
    self.align_weight = meth.align_weight
    self.target = make_target(config)
    if total_steps is not None and isinstance(self.target, TokenizerTarget):
      self.target.tokenize  # pylint: disable=pointless-statement  (a training run: import now)
    dtype = jnp.dtype(m.dtype)
    self.regressor = cae_models.LatentRegressor(
        grid_hw=self.grid_hw, encoder_width=m.width, width=m.decoder_width,
        depth=m.regressor_depth, num_heads=m.decoder_num_heads, mlp_ratio=m.mlp_ratio,
        drop_path_rate=m.drop_path_rate, layer_scale_init=m.decoder_layer_scale_init,
        remat=m.remat, dtype=dtype)
    self.decoder = cae_models.CAEDecoder(
        grid_hw=self.grid_hw, out_dim=self.target.out_dim, depth=m.decoder_depth,
        num_heads=m.decoder_num_heads, mlp_ratio=m.mlp_ratio, drop_path_rate=m.drop_path_rate,
        layer_scale_init=m.decoder_layer_scale_init, remat=m.remat, dtype=dtype)

  def init(self, rng, batch):
    enc_rng, reg_rng, dec_rng, mask_rng = jax.random.split(rng, 4)
    images = batch["image"]
    mask = self.make_masks(mask_rng, batch)["mask"]
    visible_idx, hidden_idx, _ = masking.mask_to_indices(mask, self.num_visible)
    enc_params = self.encoder.init(enc_rng, images, visible_idx)["params"]
    z = self.encoder.apply({"params": enc_params}, images, visible_idx)[:, 1:]
    reg_params = self.regressor.init(reg_rng, z, visible_idx, hidden_idx)["params"]
    latents = self.regressor.apply({"params": reg_params}, z, visible_idx, hidden_idx)
    dec_params = self.decoder.init(dec_rng, latents, hidden_idx)["params"]
    return {"encoder": enc_params, "regressor": reg_params, "decoder": dec_params}

  def make_masks(self, rng, batch) -> Dict[str, jax.Array]:
    meth = self.config.method
    b = batch["image"].shape[0]
    return {"mask": masking.block_masking(rng, b, self.grid_hw, self.num_masking,
                                          min_num_patches=meth.min_block_patches,
                                          min_aspect=meth.min_aspect)}

  def predict(self, params, images, visible_idx, hidden_idx, rng=None):
    """F on the visible patches, H to the hidden latents, G to the targets ->
    (predictions [B, M, out_dim], predicted latents [B, M, D])."""
    deterministic = rng is None
    rngs = [None] * 3 if deterministic else [{"dropout": r} for r in jax.random.split(rng, 3)]
    z = self.encoder.apply({"params": params["encoder"]}, images, visible_idx,
                           deterministic=deterministic, rngs=rngs[0])  # [B, 1 + K, D_enc]
    latents = self.regressor.apply({"params": params["regressor"]}, z[:, 1:], visible_idx,
                                   hidden_idx, deterministic, rngs=rngs[1])  # [B, M, D]
    pred = self.decoder.apply({"params": params["decoder"]}, latents, hidden_idx,
                              deterministic, rngs=rngs[2])  # [B, M, out_dim]
    return pred, latents

  def latent_target(self, params, images, hidden_idx, rng=None):
    """F(hidden patches) by the same encoder weights under stop-gradient (and the
    encoder→regressor projection when widths differ) -> [B, M, D]. With `rng`, drop path
    is active as in the official train-mode alignment encoder."""
    frozen = jax.lax.stop_gradient({"encoder": params["encoder"],
                                    "regressor": params["regressor"]})
    deterministic = rng is None
    z = self.encoder.apply({"params": frozen["encoder"]}, images, hidden_idx,
                           deterministic=deterministic,
                           rngs=None if deterministic else {"dropout": rng})  # [B, 1 + M, D_enc]
    return self.regressor.apply({"params": frozen["regressor"]}, z[:, 1:],
                                method=cae_models.LatentRegressor.project)  # [B, M, D]

  def loss(self, params, target_params, batch, masks, rng, step):
    images = batch["image"]  # [B, H, W, 3]
    visible_idx, hidden_idx, _ = masking.mask_to_indices(masks["mask"], self.num_visible)
    pred_rng, target_rng = (None, None) if rng is None else jax.random.split(rng)
    pred, latents = self.predict(params, images, visible_idx, hidden_idx, pred_rng)
    targets = self.target(images)  # [B, N, ...]
    hidden_targets = jnp.take_along_axis(
        targets, hidden_idx.reshape(hidden_idx.shape + (1,) * (targets.ndim - 2)), axis=1)
    loss_main, metrics = self.target.loss(pred, hidden_targets)
    loss_align = self.align_weight * alignment_loss(
        latents, self.latent_target(params, images, hidden_idx, target_rng))
    metrics.update(loss_main=loss_main, loss_align=loss_align)
    return loss_main + loss_align, metrics

  def summaries(self, params, batch, masks):
    """original | masked | hidden patches reconstructed (pixel targets only)."""
    if not isinstance(self.target, PixelTarget):
      return {}
    images = batch["image"]
    p = self.target.patch_size
    visible_idx, hidden_idx, _ = masking.mask_to_indices(masks["mask"], self.num_visible)
    pred, _ = self.predict(params, images, visible_idx, hidden_idx)  # [B, M, p*p*3]
    patches = vit.patchify(images.astype(jnp.float32), p)  # [B, N, p*p*3]
    if self.target.norm_pix:  # undo the per-patch standardisation with the true statistics
      hidden = jnp.take_along_axis(patches, hidden_idx[..., None], axis=1)  # [B, M, p*p*3]
      std = jnp.sqrt(hidden.var(axis=-1, ddof=1, keepdims=True) + 1e-6)
      pred = pred * std + hidden.mean(axis=-1, keepdims=True)
    filled = jax.vmap(lambda t, i, v: t.at[i].set(v))(patches, hidden_idx, pred)
    recon = vit.unpatchify(filled, p, self.grid_hw)  # [B, H, W, 3]
    hidden_pixels = common.pixel_mask(masks["mask"], p, self.grid_hw).astype(images.dtype)
    return {"reconstruction": common.reconstruction_panel(self.config, images, recon,
                                                          hidden_pixels)}
