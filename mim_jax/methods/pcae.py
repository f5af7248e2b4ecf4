"""PCAE: Li et al., "Progressively Compressed Auto-Encoder for Self-Supervised
Representation Learning", ICLR 2023.

Read against the unofficial reproduction caddyless/PCAE (`models_mae.py`,
`engine_pretrain.py`), without its defects:
  masking  MAE random masking (75%);
  encoder  student = ViT on the visible patches (+cls);
  teacher  EMA of the student encoder on the HIDDEN patches (no cls), dropping tokens
           after the configured blocks: keep the `keep_ratio` least similar to their mean
           (`forward_teacher`; 147 → 73 → 36 → 18 at 224/16);
  decoder  MAE-style self-attention decoder with mask tokens only at the kept positions
           (`forward_decoder`), output width = encoder width;
  loss     1 − cos(prediction, teacher output standardised per token).
"""
import dataclasses
import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp

from mim_jax import masking, optim
from mim_jax.methods import common
from mim_jax.methods.base import Claim, EvalDefaults, Method
from mim_jax.models.query_decoder import QueryDecoder


def similarity_to_mean(x: jax.Array) -> jax.Array:
  """cos(x_i, mean_j x_j) per token, the score S(x) of PCAE (paper Eq. 4): [B, n, D] ->
  [B, n]."""
  x = x.astype(jnp.float32)
  return jnp.sum(common.l2_normalize(x) * common.l2_normalize(x.mean(axis=1, keepdims=True)),
                 axis=-1)


def keep_lowest(x: jax.Array, positions: jax.Array, scores: jax.Array, num_keep: int):
  """Keep the `num_keep` tokens of x [B, n, D] with the lowest scores [B, n], and their
  grid positions [B, n]. Returns ([B, num_keep, D], [B, num_keep]) in ascending score."""
  order = jnp.argsort(scores, axis=1, stable=True)[:, :num_keep]  # [B, k]
  return (jnp.take_along_axis(x, order[..., None], axis=1),
          jnp.take_along_axis(positions, order, axis=1))


def compressed_forward(module, images, hidden_idx, drop_noise=None, *,
                       drop_layers: Sequence[int], keep_ratio: float):
  """The teacher pass, run as `ViTEncoder.apply(..., method=...)`: embed, take the hidden
  patches (no cls), and after each block in `drop_layers` keep int(n·keep_ratio) tokens:
  the least similar to their mean, or those with the lowest `drop_noise` [B, S, M] (random
  drop ablation). Returns (final-LN features [B, M', D], the kept grid positions after each
  stage: [B, M], then one [B, n_s] per drop)."""
  x = jnp.take_along_axis(module.embed(images), hidden_idx[..., None], axis=1)  # [B, M, D]
  positions = [hidden_idx]
  for i, blk in enumerate(module.blocks):
    x = blk(x, True)
    if i in drop_layers:
      n = x.shape[1]
      stage = len(positions) - 1
      scores = similarity_to_mean(x) if drop_noise is None else drop_noise[:, stage, :n]
      x, kept = keep_lowest(x, positions[-1], scores, int(n * keep_ratio))  # [B, n_s, D]
      positions.append(kept)
  return module.norm(x), positions


def pcae_loss(pred: jax.Array, features: jax.Array) -> jax.Array:
  """1 − cos(prediction, target) averaged over the kept tokens, the target being the
  teacher features standardised per token with the unbiased variance (caddyless/PCAE
  `engine_pretrain.py`). pred, features: [B, M', D]."""
  target = common.norm_pix_target(features.astype(jnp.float32))
  cos = jnp.sum(common.l2_normalize(pred.astype(jnp.float32)) * common.l2_normalize(target),
                axis=-1)
  return 1.0 - jnp.mean(cos)


class PCAE(Method):
  """Config (`config.method`): mask_ratio (0.75); drop_layers, the blocks after which the
  teacher drops tokens ((0, 4, 8); () disables dropping: MAE with latent targets);
  keep_ratio (0.5); random_drop (False: similarity ranking; True: the random ablation);
  target_momentum, base EMA momentum, cosine to 1 per step (0.9999). Decoder size in
  `model.decoder_width/decoder_depth/decoder_num_heads` (512/8/16)."""

  eval_defaults = EvalDefaults(
      knn_pool="cls", linear_probe_pool="cls", finetune_pool="mean", reported=("finetune",),
      source="caddyless/PCAE main_linprobe.py, main_finetune.py (MAE's, on the student "
             "encoder: use_target=False)")
  claims = (Claim("mae", "finetune", "fine-tuning 83.6 after 300 epochs in 10.1 GPU-days "
                  "against MAE's 82.9 in 15.4, ViT-B/16 (Li et al. 2023, efficiency table)",
                  cheaper=True),)

  @classmethod
  def shrink_config(cls, config, old_patch_size, old_depth, resize_data):
    """The teacher drops tokens after the blocks at the same depth fractions."""
    depth = config.model.depth
    config.method.drop_layers = tuple(sorted({i * depth // old_depth
                                              for i in config.method.drop_layers}))

  def __init__(self, config, total_steps=None):
    super().__init__(config, total_steps)
    mc, m = config.method, config.model
    common.check_mask_ratio(mc.mask_ratio)
    bad = [i for i in mc.drop_layers if not 0 <= i < m.depth]
    if bad:
      raise ValueError(f"config.method.drop_layers={tuple(mc.drop_layers)} has blocks {bad} "
                       f"outside 0..{m.depth - 1} (config.model.depth={m.depth}).")
    self.encoder = common.build_encoder(config)
    self.num_patches = self.encoder.num_patches
    self.num_visible = masking.num_visible(self.num_patches, mc.mask_ratio)
    kept = self.num_patches - self.num_visible
    for _ in set(mc.drop_layers):
      kept = int(kept * mc.keep_ratio)
    if not 0 < mc.keep_ratio <= 1 or kept < 1:
      raise ValueError(f"config.method.keep_ratio={mc.keep_ratio} must be in (0, 1] and leave "
                       f"the teacher at least one of the {self.num_patches - self.num_visible} "
                       f"hidden patches after {len(set(mc.drop_layers))} drops (it leaves "
                       f"{kept}); raise keep_ratio or drop after fewer blocks.")
    self.drop_layers = tuple(mc.drop_layers)
    self.random_drop = mc.random_drop
    self.teacher_forward = functools.partial(compressed_forward, drop_layers=self.drop_layers,
                                             keep_ratio=mc.keep_ratio)
    self.decoder = QueryDecoder(
        grid_hw=self.encoder.grid_hw, out_dim=m.width, width=m.decoder_width,
        depth=m.decoder_depth, num_heads=m.decoder_num_heads, mlp_ratio=m.mlp_ratio,
        cross_attention=False, visual_cues=False, mask_token_std=0.02, remat=m.remat,
        dtype=jnp.dtype(m.dtype))

  def make_masks(self, rng, batch) -> Dict[str, jax.Array]:
    """mask [B, N] (1 = hidden); with random_drop also drop_noise [B, stages, N − K]."""
    mask_rng, drop_rng = jax.random.split(rng)
    b = batch["image"].shape[0]
    masks = {"mask": masking.random_masking(mask_rng, b, self.num_patches,
                                            self.config.method.mask_ratio)}
    if self.random_drop:
      shape = (b, len(self.drop_layers), self.num_patches - self.num_visible)
      masks["drop_noise"] = jax.random.uniform(drop_rng, shape)
    return masks

  def teacher(self, teacher_params, images, hidden_idx, drop_noise=None):
    """Teacher features [B, M', D] and kept positions per stage (see compressed_forward)."""
    return self.encoder.apply({"params": teacher_params}, images, hidden_idx, drop_noise,
                              method=self.teacher_forward)

  def init(self, rng, batch):
    enc_rng, dec_rng, mask_rng = jax.random.split(rng, 3)
    images = batch["image"]
    masks = self.make_masks(mask_rng, batch)
    visible_idx, hidden_idx, _ = masking.mask_to_indices(masks["mask"], self.num_visible)
    enc_params = self.encoder.init(enc_rng, images, visible_idx)["params"]
    latents = self.encoder.apply({"params": enc_params}, images, visible_idx)
    _, kept = self.teacher(enc_params, images, hidden_idx, masks.get("drop_noise"))
    dec_params = self.decoder.init(dec_rng, latents, visible_idx, kept[-1])["params"]
    return {"encoder": enc_params, "decoder": dec_params}

  def target_source(self, params):
    return params["encoder"]

  def target_momentum(self, step):
    """Cosine from 0.9999 to 1 per step (caddyless/PCAE `cosine_scheduler`)."""
    return optim.cosine_momentum(step, self.total_steps, self.config.method.target_momentum)

  def eval_encoder(self, use_target=False, image_size=None, **module_fields):
    """`use_target`: the EMA teacher, whose target tree is the bare encoder."""
    encoder = super().eval_encoder(False, image_size, **module_fields)
    return dataclasses.replace(encoder, path=("target_params",)) if use_target else encoder

  def loss(self, params, target_params, batch, masks, rng, step):
    images = batch["image"]  # [B, H, W, 3]
    visible_idx, hidden_idx, _ = masking.mask_to_indices(masks["mask"], self.num_visible)
    features, kept = self.teacher(jax.lax.stop_gradient(target_params), images, hidden_idx,
                                  masks.get("drop_noise"))  # [B, M', D]
    deterministic = rng is None
    latents = self.encoder.apply({"params": params["encoder"]}, images, visible_idx,
                                 deterministic=deterministic,
                                 rngs=None if deterministic else {"dropout": rng})
    pred = self.decoder.apply({"params": params["decoder"]}, latents, visible_idx,
                              kept[-1])  # [B, M', D]
    loss = pcae_loss(pred, features)
    return loss, {"pcae_loss": loss,
                  "sim_target": common.mean_pairwise_cosine(features),
                  "sim_pred": common.mean_pairwise_cosine(jax.lax.stop_gradient(pred))}
