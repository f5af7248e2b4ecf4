"""Latent MIM: Wei, Gupta, Morgado, "Towards Latent Masked Image Modeling for
Self-Supervised Visual Representation Learning", ECCV 2024.

Follows yibingwei-1/LatentMIM `models_lmim.py` (`LMIM.forward`):
  masking  one p×p window from each (p + gap)² cell of the training image
           (`Patchify.patchify`), split by count into visible and target patches
           (`create_views`);
  encoder  online ViT + MLP projector on the visible patches (+cls);
  decoder  queries at the target positions (`xvits.py` `CrossDecoder`);
  targets  target ViT + projector on the target patches only (+cls, dropped);
  loss     PatchDisc (`forward_loss`, 'infonce_patches') + similarity regulariser.
Every rung of the paper's ablation ladder is a field of `config.method` (see `LatentMIM`).
"""
from typing import Dict

import jax
import jax.numpy as jnp
import optax

from mim_jax import masking, optim
from mim_jax.methods import common
from mim_jax.methods.base import Claim, EvalDefaults, EvalEncoder, Method
from mim_jax.models.projector import MLPProjector
from mim_jax.models.query_decoder import QueryDecoder

TARGET_MODES = ("momentum", "stopgrad", "separate", "joint")
LOSSES = ("patchdisc", "mse", "l1", "huber")
# decoder name -> (cross_attention, visual_cues)
DECODERS = {"cross_attn_cues": (True, True), "cross_attn": (True, False),
            "self_attn": (False, False)}


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """round(N·(1 − ratio)): 20 of 196 at 0.9 (the official `num_vis=20`), 49 at 0.75."""
  return int(round(num_patches * (1.0 - mask_ratio)))


def patch_disc_loss(pred: jax.Array, target: jax.Array, tau: float) -> jax.Array:
  """PatchDisc (LatentMIM `forward_loss`, 'infonce_patches'): InfoNCE among the target
  tokens of each image. Predictions are standardised over tokens with the unbiased std
  (+1e-4), both sides L2-normalised, logits = ẑ·zᵀ/τ, positive = same position; the
  cross-entropy is averaged over all tokens and scaled by 2τ. pred, target: [B, T, D]."""
  pred = pred.astype(jnp.float32)
  pred = (pred - pred.mean(axis=1, keepdims=True)) / (
      pred.std(axis=1, ddof=1, keepdims=True) + 1e-4)
  logits = jnp.einsum("bpd,bqd->bpq", common.l2_normalize(pred),
                      common.l2_normalize(target.astype(jnp.float32))) / tau  # [B, T, T]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.diagonal(log_probs, axis1=1, axis2=2)) * (2.0 * tau)


def regression_loss(pred: jax.Array, target: jax.Array, kind: str,
                    huber_delta: float = 1.0) -> jax.Array:
  """Mean element-wise 'mse', 'l1' or 'huber' against per-token standardised targets
  (unbiased variance, as LatentMIM `forward_loss` 'norm_l2')."""
  diff = pred.astype(jnp.float32) - common.norm_pix_target(target.astype(jnp.float32))
  if kind == "mse":
    return jnp.mean(diff**2)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  return jnp.mean(optax.losses.huber_loss(diff, delta=huber_delta))


def similarity_regulariser(pred: jax.Array, visible: jax.Array, goal: jax.Array,
                           coeff: float) -> jax.Array:
  """c·(sim(ẑ) − s)² + c·(sim(z_V) − s)² over predictions and visible features, sim =
  `common.mean_pairwise_cosine` (LatentMIM `LMIM.forward`, `avg_sim_coeff`)."""
  return coeff * ((common.mean_pairwise_cosine(pred) - goal)**2 +
                  (common.mean_pairwise_cosine(visible) - goal)**2)


def cosine_decay(step, total_steps: int, start: float, end: float) -> jax.Array:
  """start → end on a half-cosine per step (LatentMIM `cosine_decay_schedule`)."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))


class LatentMIM(Method):
  """Config (`config.method`):
    patch_gap: px between patch windows; training image = grid·(p + gap) px (4; 0 for
      the contiguous grid). Evaluation uses the encoder at grid·p px.
    mask_ratio: hidden fraction; visible = round(N·(1 − ratio)) (0.9: 20 of 196);
      all other patches are targets.
    target_mode: 'momentum' (EMA target encoder, the method), 'stopgrad' (online weights
      under stop-gradient), 'separate' (a second, independently initialised encoder +
      projector trained by the same loss, params['target']), 'joint' (online weights
      with gradient: the naive, collapsing variant).
    target_momentum: base EMA momentum, cosine to 1 per step (0.99).
    loss: 'patchdisc' | 'mse' | 'l1' | 'huber'; tau (0.2); huber_delta (1.0).
    decoder: 'cross_attn_cues' | 'cross_attn' | 'self_attn'; size from
      `model.decoder_width/decoder_depth/decoder_num_heads` (512/3/16).
    projector_depth (3; 0 = no projector), projector_hidden (4096).
    sim_reg_coeff: similarity regulariser weight c (0.1; 0 = off), its goal s decays
      from sim_reg_start (0.75) to sim_reg_end (0.25) on a cosine over training.
  """

  eval_defaults = EvalDefaults(
      knn_pool="mean", linear_probe_pool="mean", finetune_pool="mean", block_fraction=1.0,
      reported=("knn", "linear_probe", "finetune"),
      source="yibingwei-1/LatentMIM util/misc.py eval_knn (the online encoder's last block, "
             "mean of its patch tokens, no final norm; leave-one-out 1-NN on the eval split: "
             "configs/eval/knn.py:latent_mim_nn); no linear-probe or fine-tuning code, the "
             "same feature assumed")
  claims = (Claim("mae", "linear_probe", "linear probe 72.0 (800 epochs) against MAE's 67.8 "
                  "(1600), ViT-B/16 (Wei et al. 2024, comparison with prior work)"),
            Claim("mae", "knn", "k-NN 50.1 (800 epochs) against MAE's 12.2 (1600), ViT-B/16 "
                  "(Wei et al. 2024, comparison with prior work)"))

  @classmethod
  def shrink_config(cls, config, old_patch_size, old_depth, resize_data):
    """The gap keeps its size in patches, and resized images its grid·(patch + gap)."""
    p, method = config.model.patch_size, config.method
    method.patch_gap = method.patch_gap * p // old_patch_size
    if resize_data:
      config.data.image_size = config.data.image_size // p * (p + method.patch_gap)

  def __init__(self, config, total_steps=None):
    super().__init__(config, total_steps)
    mc, m = config.method, config.model
    for field, value, choices in (("target_mode", mc.target_mode, TARGET_MODES),
                                  ("loss", mc.loss, LOSSES),
                                  ("decoder", mc.decoder, tuple(DECODERS))):
      if value not in choices:
        raise ValueError(f"Unknown config.method.{field}={value!r}; choose one of {choices}.")
    self.patch_size, self.gap = m.patch_size, mc.patch_gap
    cell = self.patch_size + self.gap
    if config.data.image_size % cell:
      raise ValueError(f"config.data.image_size={config.data.image_size} must be a multiple "
                       f"of config.model.patch_size + config.method.patch_gap = {cell}.")
    common.check_mask_ratio(mc.mask_ratio)
    grid = config.data.image_size // cell
    self.encoder = common.build_encoder(config, image_size=grid * self.patch_size)
    self.grid_hw = self.encoder.grid_hw
    self.num_patches = self.encoder.num_patches
    self.num_visible = num_visible(self.num_patches, mc.mask_ratio)
    if not 0 < self.num_visible < self.num_patches:
      raise ValueError(f"config.method.mask_ratio={mc.mask_ratio} leaves {self.num_visible} "
                       f"of {self.num_patches} patches visible; need at least one of each.")
    self.target_mode = mc.target_mode
    dtype = jnp.dtype(m.dtype)
    self.projector = (MLPProjector(mc.projector_depth, mc.projector_hidden, dtype=dtype)
                      if mc.projector_depth > 0 else None)
    cross, cues = DECODERS[mc.decoder]
    self.decoder = QueryDecoder(
        grid_hw=self.grid_hw, out_dim=m.width, width=m.decoder_width, depth=m.decoder_depth,
        num_heads=m.decoder_num_heads, mlp_ratio=m.mlp_ratio, cross_attention=cross,
        visual_cues=cues, mask_token_std=0.0, remat=m.remat, dtype=dtype)

  # masking
  def make_masks(self, rng, batch) -> Dict[str, jax.Array]:
    """mask [B, N] (1 = target), offsets [B, gh, gw, 2] of the windows in their cells."""
    split_rng, offset_rng = jax.random.split(rng)
    b = batch["image"].shape[0]
    return {"mask": masking.random_split(split_rng, b, self.num_patches, self.num_visible),
            "offsets": masking.grid_gap_offsets(offset_rng, b, self.grid_hw, self.gap)}

  def sampled_images(self, images, masks):
    """[B, g·(p + gap), ., C] -> the sampled windows side by side, [B, g·p, g·p, C]."""
    return masking.grid_gap_crop(images, masks["offsets"], self.patch_size, self.gap)

  # encoders
  def encode(self, branch, images, idx, rng=None):
    """ViT (+ projector) on the patches at idx [B, M] (+cls) -> [B, 1 + M, D]."""
    deterministic = rng is None
    x = self.encoder.apply({"params": branch["encoder"]}, images, idx,
                           deterministic=deterministic,
                           rngs=None if deterministic else {"dropout": rng})
    if self.projector is not None:
      x = self.projector.apply({"params": branch["projector"]}, x)
    return x

  def online(self, params):
    """The online encoder (+ projector): what the momentum targets track."""
    return {k: params[k] for k in ("encoder", "projector") if k in params}

  def target_branch(self, params, target_params):
    """The target encoder's parameters under `config.method.target_mode`."""
    if self.target_mode == "momentum":
      return jax.lax.stop_gradient(target_params)
    if self.target_mode == "stopgrad":
      return jax.lax.stop_gradient(self.online(params))
    if self.target_mode == "separate":
      return params["target"]
    return self.online(params)

  def init(self, rng, batch):
    enc_rng, proj_rng, dec_rng, target_rng, mask_rng = jax.random.split(rng, 5)
    masks = self.make_masks(mask_rng, batch)
    images = self.sampled_images(batch["image"], masks)
    visible_idx, target_idx, _ = masking.mask_to_indices(masks["mask"], self.num_visible)

    def init_branch(enc_key, proj_key):
      branch = {"encoder": self.encoder.init(enc_key, images, visible_idx)["params"]}
      if self.projector is not None:
        latents = self.encoder.apply({"params": branch["encoder"]}, images, visible_idx)
        branch["projector"] = self.projector.init(proj_key, latents)["params"]
      return branch

    params = init_branch(enc_rng, proj_rng)
    latents = self.encode(params, images, visible_idx)  # [B, 1 + K, D]
    params["decoder"] = self.decoder.init(dec_rng, latents, visible_idx, target_idx)["params"]
    if self.target_mode == "separate":
      params["target"] = init_branch(*jax.random.split(target_rng))
    return params

  def target_source(self, params):
    return self.online(params) if self.target_mode == "momentum" else None

  def target_momentum(self, step):
    """m = 1 − (1 − m₀)·(1 + cos(π·t/T))/2 (LatentMIM `adjust_target_momentum`)."""
    return optim.cosine_momentum(step, self.total_steps, self.config.method.target_momentum)

  def eval_encoder(self, use_target=False, image_size=None, **module_fields):
    """The encoder at grid·p px, without gaps (main_lmim.py builds its encoder at
    grid·patch and evaluates at 224 px); `use_target`: the momentum target encoder, or
    the separately trained one of target_mode='separate'."""
    if use_target and self.target_mode not in ("momentum", "separate"):
      raise ValueError(f"config.method.target_mode={self.target_mode!r} keeps no target "
                       "encoder of its own: set use_target=False.")
    size = self.encoder.image_size if image_size is None else image_size
    path = ("params", "encoder")
    if use_target:
      path = (("target_params", "encoder") if self.target_mode == "momentum" else
              ("params", "target", "encoder"))
    module = common.build_encoder(self.config, size, use_mask_token=False, **module_fields)
    return EvalEncoder(module, path)

  def encoder_inputs(self, batch, masks):
    """The sampled windows side by side, and the mask with 1 = target patch."""
    return self.sampled_images(batch["image"], masks), masks["mask"]

  # loss
  def loss(self, params, target_params, batch, masks, rng, step):
    mc = self.config.method
    images = self.sampled_images(batch["image"], masks)  # [B, g·p, g·p, 3]
    visible_idx, target_idx, _ = masking.mask_to_indices(masks["mask"], self.num_visible)
    latents = self.encode(self.online(params), images, visible_idx, rng)  # [B, 1 + K, D]
    pred = self.decoder.apply({"params": params["decoder"]}, latents, visible_idx,
                              target_idx)  # [B, T, D]
    target = self.encode(self.target_branch(params, target_params), images,
                         target_idx)[:, 1:]  # [B, T, D]
    if mc.loss == "patchdisc":
      loss = patch_disc_loss(pred, target, mc.tau)
    else:
      loss = regression_loss(pred, target, mc.loss, mc.huber_delta)
    similarity = lambda x: common.mean_pairwise_cosine(jax.lax.stop_gradient(x))
    metrics = {"latent_loss": loss, "sim_target": similarity(target),
               "sim_pred": similarity(pred), "sim_visible": similarity(latents[:, 1:])}
    if mc.sim_reg_coeff > 0:
      if self.total_steps is None:
        raise ValueError("The similarity regulariser's schedule needs the run's length: "
                         "build LatentMIM with total_steps.")
      goal = cosine_decay(step, self.total_steps, mc.sim_reg_start, mc.sim_reg_end)
      reg = similarity_regulariser(pred, latents[:, 1:], goal, mc.sim_reg_coeff)
      metrics.update(sim_regulariser=reg, sim_goal=goal)
      loss = loss + reg
    return loss, metrics
