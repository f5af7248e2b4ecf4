"""Multi-View MAE: Ji, Han, Rhee, "Multi-View Masked Autoencoder for General Image
Representation", Applied Sciences 2023 (no public code; ../shared/docs/METHODS.md §6).

Two RandomResizedCrop + flip views of each image (§3.1.1), each masked independently,
80% hidden (§3.1.2); one MAE encoder and decoder for both (§3.1.3–4); loss (§3.2)

  L = L_rec + [two targets] L_cross + λ·L_con,  λ = 2.0 (best of the §4.3 ablation).

- L_rec (§3.2.1): MAE's hidden-patch MSE (`mae.mae_loss`) on both views, averaged.
- L_cross, the "two different targets" ablation (§4.3): view A's decoder also predicts
  view B's pixels at A's hidden patches that lie inside B's crop. Every pixel centre of
  such a patch is mapped through the two crop boxes and flips reported by the input
  pipeline into B's pixel frame and B is read there bilinearly, so the target shows B's
  rendering (its scale) of A's region in A's layout (`overlap_coordinates`,
  `sample_patches`). A patch counts when all its p² points lie between B's pixel
  centres. Same MSE (per-patch standardised with `norm_pix_loss`), averaged over the
  overlapping hidden patches of both views. `cross_head='separate'` predicts it with a
  second linear output of the decoder (default: two targets, two outputs); 'shared'
  asks the MAE output itself to match both.
- L_con (§3.2.2): SimCLR NT-Xent between the two views' pooled encoder outputs after a
  projector Linear–ReLU–Linear (SimCLR's head; `proj_hidden_dim`, `proj_dim`),
  temperature τ = 0.1 (SimCLR), both directions, 2B − 2 negatives per anchor from the
  whole global batch. Pooling: mean of the visible patch tokens ('mean') or cls ('cls').

Config (`config.method`; configs/multiview_mae.py): mask_ratio, norm_pix_loss,
contrastive, contrastive_weight (λ), temperature, pool, proj_hidden_dim, proj_dim,
two_targets, cross_head; decoder depth in `model.decoder_depth` (8, MAE's, tied best with
4 in §4.3).
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from mim_jax import masking
from mim_jax.methods import mae
from mim_jax.methods.base import Claim, EvalDefaults
from mim_jax.models import vit
from mim_jax.models.projector import SimCLRProjector

POOLS = ("mean", "cls")
CROSS_HEADS = ("separate", "shared")
_OVERLAP_TOL = 1e-3  # pixels


def _merge_views(x: jax.Array) -> jax.Array:
  """[B, V, ...] -> [B·V, ...] (the views of an image stay adjacent)."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


# --- targets: the other view at the overlap ---------------------------------------------

def overlap_coordinates(box_a: jax.Array, flip_a: jax.Array, box_b: jax.Array,
                        flip_b: jax.Array, image_size: int,
                        patch_size: int) -> Tuple[jax.Array, jax.Array]:
  """Where each pixel of each patch of view A lies in view B.

  box_*: [B, 4] (y0, x0, h, w) crop boxes as fractions of the source image; flip_*: [B]
  (see data.create_train_iterator). View pixel (i, j) has its centre at
  ((i + .5)/S, (j + .5)/S) of the view, i.e. at source point (y0 + h·(i + .5)/S,
  x0 + w·u), u = (j + .5)/S or 1 − (j + .5)/S when flipped.
  Returns coords [B, N, p·p, 2] (row, col) in B's pixel units, pixels of a patch
  row-major as in `vit.patchify`, and overlap [B, N] float32: 1 where every point of the
  patch lies within B's pixel centres [0, S − 1]².
  """
  s, p = image_size, patch_size
  centres = (jnp.arange(s, dtype=jnp.float32) + 0.5) / s  # [S]
  grid = jnp.stack(jnp.meshgrid(centres, centres, indexing="ij"), -1)  # [S, S, 2]
  points = vit.patchify(grid[None], p).reshape(1, -1, p * p, 2)  # [1, N, p·p, 2]
  row, col = points[..., 0], points[..., 1]  # [1, N, p·p] view-relative
  a = lambda x: x[:, None, None]  # [B] -> [B, 1, 1]
  flip_a, flip_b = flip_a.astype(bool), flip_b.astype(bool)
  src_y = a(box_a[:, 0]) + a(box_a[:, 2]) * row  # [B, N, p·p]
  src_x = a(box_a[:, 1]) + a(box_a[:, 3]) * jnp.where(a(flip_a), 1.0 - col, col)
  row_b = (src_y - a(box_b[:, 0])) / a(box_b[:, 2])  # [B, N, p·p] B-relative
  col_b = (src_x - a(box_b[:, 1])) / a(box_b[:, 3])
  col_b = jnp.where(a(flip_b), 1.0 - col_b, col_b)
  coords = jnp.stack([row_b, col_b], -1) * s - 0.5  # [B, N, p·p, 2] B's pixels
  inside = (coords >= -_OVERLAP_TOL) & (coords <= s - 1 + _OVERLAP_TOL)
  return coords, jnp.all(inside, axis=(-2, -1)).astype(jnp.float32)


def sample_patches(images: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear reads of images [B, S, S, C] at coords [B, N, p·p, 2] -> [B, N, p·p·C],
  each patch flattened as (p, p, C) like `vit.patchify`."""
  b, n, pp, _ = coords.shape

  def one_image(image, points):  # [S, S, C], [M, 2] -> [M, C]
    read = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [points[:, 0], points[:, 1]], order=1, mode="nearest")
    return jax.vmap(read, in_axes=-1, out_axes=-1)(image)

  values = jax.vmap(one_image)(images, coords.reshape(b, n * pp, 2))  # [B, N·p·p, C]
  return values.reshape(b, n, pp * images.shape[-1])


# --- contrastive loss --------------------------------------------------------------------

def nt_xent_loss(z_a: jax.Array, z_b: jax.Array, temperature: float) -> jax.Array:
  """SimCLR's NT-Xent over B positive pairs (z_a[i], z_b[i]), z_*: [B, D].

  All 2B projections are L2-normalised; each is an anchor whose positive is its pair
  and whose negatives are the other 2B − 2; mean cross-entropy over the 2B anchors
  (both directions). Called on global arrays, the negatives span every device.
  """
  z = jnp.concatenate([z_a, z_b], axis=0).astype(jnp.float32)  # [2B, D]
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  n, b = z.shape[0], z_a.shape[0]
  logits = z @ z.T / temperature  # [2B, 2B]
  logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)  # no self-similarity
  positive = jnp.concatenate([jnp.arange(b, n), jnp.arange(b)])  # [2B]
  positive_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]  # [2B]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logit)


# --- the method --------------------------------------------------------------------------

class MultiViewMAE(mae.MAE):
  """MAE on two views + cross-view targets + NT-Xent. Batches: 'image' [B, 2, S, S, 3],
  with 'crop_box' [B, 2, 4] and 'flip' [B, 2] when `two_targets`; masks [B, 2, N]."""

  num_views = 2
  eval_defaults = EvalDefaults(
      knn_pool="cls", linear_probe_pool="cls", finetune_pool="mean",
      reported=("linear_probe", "finetune"),
      source="Ji et al. 2023 Sec. 4.1.2-4.1.3 (no code: MAE's protocol assumed)")
  claims = (Claim("mae", "linear_probe", "linear probe 76.7 against MAE's 68.0, ViT-B/16, "
                  "1600 epochs (Ji et al. 2023 Sec. 4.2)"),
            Claim("mae", "knn", "no k-NN reported; its contrastive term is what should "
                  "separate images (Ji et al. 2023 Sec. 3.2.2)"))

  def __init__(self, config, total_steps=None):
    super().__init__(config, total_steps)
    c = config.method
    if c.pool not in POOLS:
      raise ValueError(f"config.method.pool={c.pool!r}: choose one of {POOLS}.")
    if c.cross_head not in CROSS_HEADS:
      raise ValueError(f"config.method.cross_head={c.cross_head!r}: choose one of "
                       f"{CROSS_HEADS}.")
    if c.temperature <= 0:
      raise ValueError(f"config.method.temperature={c.temperature} must be positive.")
    self.contrastive, self.two_targets = c.contrastive, c.two_targets
    self.contrastive_weight, self.temperature, self.pool = (c.contrastive_weight,
                                                            c.temperature, c.pool)
    self.patch_dim = self.patch_size**2 * 3
    self.separate_head = c.two_targets and c.cross_head == "separate"
    if self.separate_head:  # two linear outputs: own view | other view
      self.decoder = self.decoder.clone(out_dim=2 * self.patch_dim)
    self.projector = SimCLRProjector(c.proj_hidden_dim, c.proj_dim)
    self.batch_keys = ("image", "crop_box", "flip") if c.two_targets else ("image",)

  def init(self, rng, batch):
    enc_rng, dec_rng, proj_rng, mask_rng = jax.random.split(rng, 4)
    images = _merge_views(batch["image"])  # [B·2, S, S, 3]
    mask = _merge_views(self.make_masks(mask_rng, batch)["mask"])  # [B·2, N]
    visible_idx, _, _ = masking.mask_to_indices(mask, self.num_visible)
    params = {"encoder": self.encoder.init(enc_rng, images, visible_idx)["params"]}
    latents, restore_idx = self.encode(params, images, mask)
    params["decoder"] = self.decoder.init(dec_rng, latents, restore_idx)["params"]
    if self.contrastive:
      params["projector"] = self.projector.init(proj_rng, self.pooled(latents))["params"]
    return params

  def make_masks(self, rng, batch) -> Dict[str, jax.Array]:
    """Independent MAE masks per view: {'mask': [B, 2, N]}."""
    b, v = batch["image"].shape[:2]
    mask = masking.random_masking(rng, b * v, self.num_patches, self.mask_ratio)
    return {"mask": mask.reshape(b, v, self.num_patches)}

  def pooled(self, latents: jax.Array) -> jax.Array:
    """[B, 1 + K, D] -> [B, D]: mean of the visible patch tokens, or the cls token."""
    return latents[:, 1:].mean(axis=1) if self.pool == "mean" else latents[:, 0]

  def predict(self, params, images, mask, rng=None):
    """Own-view pixels [B, N, p·p·3] (what MAE's summaries show)."""
    return super().predict(params, images, mask, rng)[..., :self.patch_dim]

  def cross_targets(self, batch) -> Tuple[jax.Array, jax.Array]:
    """Each view's patches read from the other view: ([B·2, N, p·p·3], overlap [B·2, N])."""
    other = lambda x: _merge_views(x[:, ::-1])  # view v -> view 1 − v
    box, flip = batch["crop_box"], batch["flip"]
    coords, overlap = overlap_coordinates(_merge_views(box), _merge_views(flip), other(box),
                                          other(flip), self.config.data.image_size,
                                          self.patch_size)
    return sample_patches(other(batch["image"]), coords), overlap

  def loss(self, params, target_params, batch, masks, rng, step):
    b, v = batch["image"].shape[:2]
    images = _merge_views(batch["image"])  # [B·2, S, S, 3]
    mask = _merge_views(masks["mask"])  # [B·2, N]
    latents, restore_idx = self.encode(params, images, mask, rng)  # [B·2, 1 + K, D]
    out = self.decoder.apply({"params": params["decoder"]}, latents, restore_idx)
    pred = out[..., :self.patch_dim]  # [B·2, N, p·p·3]
    rec = mae.mae_loss(pred, vit.patchify(images, self.patch_size), mask, self.norm_pix_loss)
    loss, metrics = rec, {"mae_loss": rec}
    if self.two_targets:
      target, overlap = self.cross_targets(batch)  # [B·2, N, p·p·3], [B·2, N]
      cross_pred = out[..., self.patch_dim:] if self.separate_head else pred
      cross = mae.mae_loss(cross_pred, target, mask * overlap, self.norm_pix_loss)
      loss = loss + cross
      metrics.update(cross_loss=cross, overlap_fraction=jnp.mean(overlap))
    if self.contrastive:
      z = self.projector.apply({"params": params["projector"]}, self.pooled(latents))
      z = z.reshape(b, v, -1)  # [B, 2, proj_dim]
      con = nt_xent_loss(z[:, 0], z[:, 1], self.temperature)
      loss = loss + self.contrastive_weight * con
      metrics["contrastive_loss"] = con
    return loss, metrics

  def summaries(self, params, batch, masks):
    """MAE's original | masked | reconstruction panel, view 1 above view 2."""
    b, v = batch["image"].shape[:2]
    panel = super().summaries(params, {"image": _merge_views(batch["image"])},
                              {"mask": _merge_views(masks["mask"])})["reconstruction"]
    return {"reconstruction": panel.reshape((b, v * panel.shape[1]) + panel.shape[2:])}
