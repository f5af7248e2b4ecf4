"""Multi-View MAE: NT-Xent over the global batch, cross-view targets, loss, sharding,
learning on CIFAR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import (KNN_MARGIN, REPO, assert_sharded_equals_one_device, config_file,
                      coordinate_ramp, data_config, learning_run, numpy_mae_loss,
                      scalar_series, shrunk_config, tiny_mae_config, write_npz)
from mim_jax import data, methods, sharding
from mim_jax.training import config as train_config
from mim_jax.methods import multiview_mae as mv
from mim_jax.models import vit


def tiny_multiview_config(**method_fields):
  """Multi-View MAE's ViT-B recipe shrunk, with `method_fields`."""
  return shrunk_config("multiview_mae.py",
                       **{f"method.{k}": v for k, v in method_fields.items()})


def random_batch(config, b=8, seed=0):
  """Random views with random crop boxes (inside the image) and flips."""
  rng = np.random.default_rng(seed)
  s = config.data.image_size
  size = rng.uniform(0.3, 1.0, (b, 2, 2))  # (h, w)
  corner = rng.uniform(0.0, 1.0, (b, 2, 2)) * (1.0 - size)
  return {"image": rng.normal(size=(b, 2, s, s, 3)).astype(np.float32),
          "crop_box": np.concatenate([corner, size], -1).astype(np.float32),
          "flip": rng.random((b, 2)) < 0.5}


def numpy_nt_xent(z_a, z_b, temperature):
  """SimCLR eq. (1), one anchor at a time, in float64."""
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n, b = len(z), len(z_a)
  losses = []
  for i in range(n):
    positive = (i + b) % n
    others = [j for j in range(n) if j != i]
    logits = np.array([z[i] @ z[j] / temperature for j in others])
    losses.append(-(z[i] @ z[positive] / temperature) + np.log(np.exp(logits).sum()))
  return float(np.mean(losses))


# --- contrastive loss --------------------------------------------------------------------

def test_nt_xent_matches_numpy_with_negatives_from_every_device():
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  z_a, z_b = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(2))
  want = numpy_nt_xent(z_a, z_b, 0.1)
  loss_fn = jax.jit(mv.nt_xent_loss, static_argnums=2)
  one_device = float(loss_fn(z_a, z_b, 0.1))
  mesh = sharding.create_mesh(tiny_mae_config())  # 8 devices on the batch axis
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P(sharding.BATCH_AXES)))
  sharded_a, sharded_b = shard(z_a), shard(z_b)
  assert len({s.device for s in sharded_a.addressable_shards}) == 8
  eight_devices = float(loss_fn(sharded_a, sharded_b, 0.1))
  np.testing.assert_allclose(one_device, want, rtol=1e-5)
  np.testing.assert_allclose(eight_devices, want, rtol=1e-5)
  # negatives from the local shard only (2 pairs per device) would give another value
  local_only = np.mean([numpy_nt_xent(z_a[i:i + 2], z_b[i:i + 2], 0.1)
                        for i in range(0, 16, 2)])
  assert abs(local_only - want) > 0.5


def test_nt_xent_is_minimal_for_matching_pairs():
  z = np.eye(4, dtype=np.float32)
  aligned = float(mv.nt_xent_loss(z, z, 0.1))
  shuffled = float(mv.nt_xent_loss(z, z[::-1], 0.1))
  np.testing.assert_allclose(aligned, np.log(1 + 6 * np.exp(-10.0)), atol=1e-6)  # 6 negatives
  assert shuffled > aligned + 5


# --- cross-view targets ------------------------------------------------------------------

def test_overlap_mapping_between_two_known_crops():
  """8 px views, 4 px patches (2x2 grid). A = the image's left half, B = its right 80%:
  A's right column of patches (source x in [.25, .5]) lies inside B, its left one does
  not. A's pixel (1, 5) is at source (1.5/8, .5·5.5/8) = (.1875, .34375), which is B's
  pixel (.1875·8 − .5, (.34375 − .2)/.8·8 − .5) = (1, .9375), or column 7 − .9375 when
  B is flipped."""
  box_a = np.array([[0, 0, 1, 0.5]], np.float32)
  box_b = np.array([[0, 0.2, 1, 0.8]], np.float32)
  no, yes = np.array([False]), np.array([True])
  coords, overlap = mv.overlap_coordinates(box_a, no, box_b, no, 8, 4)
  assert coords.shape == (1, 4, 16, 2)
  np.testing.assert_array_equal(overlap, [[0, 1, 0, 1]])
  pixel_1_5 = coords[0, 1, 1 * 4 + 1]  # patch (0, 1), pixel (1, 1) inside it
  np.testing.assert_allclose(pixel_1_5, [1.0, 0.9375], atol=1e-5)
  coords_b_flipped, overlap_b_flipped = mv.overlap_coordinates(box_a, no, box_b, yes, 8, 4)
  np.testing.assert_array_equal(overlap_b_flipped, [[0, 1, 0, 1]])
  np.testing.assert_allclose(coords_b_flipped[0, 1, 5], [1.0, 7 - 0.9375], atol=1e-5)
  # A flipped: its left column of patches now shows source x in [.25, .5]
  _, overlap_a_flipped = mv.overlap_coordinates(box_a, yes, box_b, no, 8, 4)
  np.testing.assert_array_equal(overlap_a_flipped, [[1, 0, 1, 0]])
  # C = the central quarter of A = the whole image: all of C's patches lie in A, none of
  # A's in C; C's pixel (0, 0) is at source (.25 + .5·.5/8) = .28125 in both axes: A's 1.75
  box_full, box_centre = np.array([[0, 0, 1, 1]], np.float32), np.array(
      [[0.25, 0.25, 0.5, 0.5]], np.float32)
  coords_c, overlap_c = mv.overlap_coordinates(box_centre, no, box_full, no, 8, 4)
  np.testing.assert_array_equal(overlap_c, [[1, 1, 1, 1]])
  np.testing.assert_allclose(coords_c[0, 0, 0], [1.75, 1.75], atol=1e-5)
  _, overlap_full = mv.overlap_coordinates(box_full, no, box_centre, no, 8, 4)
  np.testing.assert_array_equal(overlap_full, [[0, 0, 0, 0]])


def test_cross_targets_of_the_same_crop_are_the_view_itself():
  """Same box: the other view's pixels are read exactly (unflipped, or mirrored back)."""
  rng = np.random.default_rng(1)
  image = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  box = np.array([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32)
  flip_a = np.array([False, True])
  for flip_b, other in ((flip_a, image), (~flip_a, image[:, :, ::-1])):
    coords, overlap = mv.overlap_coordinates(box, flip_a, box, flip_b, 16, 4)
    np.testing.assert_array_equal(overlap, 1.0)
    np.testing.assert_allclose(mv.sample_patches(jnp.asarray(other), coords),
                               vit.patchify(image, 4), atol=1e-5)


def test_cross_targets_from_pipeline_views_show_the_same_source_points(tmp_path):
  """Two pipeline views of the coordinate ramp: on overlapping patches, view B read at
  A's mapped pixels equals A's own pixels (linear content; bilinear reads are exact away
  from the crop borders, where the resize clamps)."""
  config = data_config(source="npz", path=write_npz(tmp_path / "r.npz", coordinate_ramp()[None]),
                       interpolation="bilinear", crop_scale=(0.2, 1.0), image_size=32)
  batch = next(data.create_train_iterator(config, global_batch_size=32, num_views=2,
                                          process_index=0, process_count=1))
  method_config = tiny_multiview_config()
  method_config.data.image_size = 32
  method = mv.MultiViewMAE(method_config)
  target, overlap = method.cross_targets(batch)  # [64, 64, 48], [64, 64]
  own = vit.patchify(batch["image"].reshape(64, 32, 32, 3), 4)
  scale = np.asarray(data.default_data_config().std) * 255  # normalised -> pixel levels
  error = np.abs(np.asarray(target - own).reshape(64, 64, 16, 3) * scale)[..., :2]
  assert 0.05 < float(overlap.mean()) < 0.95
  assert np.median(error[overlap > 0]) < 0.05 and np.mean(error[overlap > 0]) < 0.5
  # dropping the flips breaks the correspondence
  wrong, _ = method.cross_targets({**batch, "flip": np.zeros_like(batch["flip"])})
  wrong_error = np.abs(np.asarray(wrong - own).reshape(64, 64, 16, 3) * scale)[..., :2]
  assert np.mean(wrong_error[overlap > 0]) > 5.0


# --- the loss ----------------------------------------------------------------------------

def loss_and_parts(method, batch, pool=lambda latents: latents[:, 1:].mean(1)):
  """The method's loss and metrics, with the parts an independent check needs: decoder
  outputs, cross-view targets, overlap, projections of `pool`ed encoder outputs."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  masks = method.make_masks(keys[1], batch)

  @jax.jit
  def run(batch, masks):
    params = method.init(keys[0], batch)
    loss, metrics = method.loss(params, {}, batch, masks, None, 0)
    b, v, s = batch["image"].shape[:3]
    latents, restore_idx = method.encode(params, batch["image"].reshape(b * v, s, s, 3),
                                         masks["mask"].reshape(b * v, -1))
    out = method.decoder.apply({"params": params["decoder"]}, latents, restore_idx)
    target, overlap = (method.cross_targets(batch) if method.two_targets
                       else (None, None))
    z = (method.projector.apply({"params": params["projector"]}, pool(latents))
         if method.contrastive else None)
    return params, loss, metrics, out, target, overlap, z

  params, loss, metrics, *parts = jax.device_get(run(batch, masks))
  return (params, float(loss), {k: float(v) for k, v in metrics.items()},
          np.asarray(masks["mask"]), *parts)


def test_loss_is_reconstruction_plus_cross_view_plus_weighted_nt_xent():
  config = tiny_multiview_config()
  method = mv.MultiViewMAE(config)
  assert method.num_views == 2 and method.batch_keys == ("image", "crop_box", "flip")
  batch = random_batch(config)
  params, loss, metrics, mask, out, target, overlap, z = loss_and_parts(method, batch)
  assert mask.shape == (8, 2, 16) and (mask.sum(-1) == 16 - 3).all()  # 80%: 3 visible
  assert not np.array_equal(mask[:, 0], mask[:, 1])  # each view masked on its own
  images, mask = batch["image"].reshape(16, 16, 16, 3), mask.reshape(16, 16)
  assert out.shape == (16, 16, 2 * 48)  # own-view and other-view outputs
  want_rec = numpy_mae_loss(out[..., :48], images, mask, 4, True)
  cross_mask = mask * overlap
  assert 0 < cross_mask.sum() < mask.sum()
  # numpy_mae_loss patchifies images: turn the [16, N, p·p·3] targets back into images
  target_images = target.reshape(16, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5)
  want_cross = numpy_mae_loss(out[..., 48:], target_images.reshape(16, 16, 16, 3),
                              cross_mask, 4, True)
  z = z.reshape(8, 2, -1)
  want_con = numpy_nt_xent(z[:, 0], z[:, 1], 0.1)
  np.testing.assert_allclose(metrics["mae_loss"], want_rec, rtol=1e-5)
  np.testing.assert_allclose(metrics["cross_loss"], want_cross, rtol=1e-5)
  np.testing.assert_allclose(metrics["contrastive_loss"], want_con, rtol=1e-5)
  np.testing.assert_allclose(loss, want_rec + want_cross + 2.0 * want_con, rtol=1e-5)
  np.testing.assert_allclose(metrics["overlap_fraction"], overlap.mean(), rtol=1e-6)
  masks = {"mask": mask.reshape(8, 2, 16)}
  panel = jax.jit(method.summaries)(params, batch, masks)["reconstruction"]
  assert panel.shape == (8, 32, 48, 3)  # the two views one above the other


def test_ablation_switches():
  batch = random_batch(tiny_multiview_config())
  # without two targets and without the contrastive loss: MAE on both views
  method = mv.MultiViewMAE(tiny_multiview_config(two_targets=False, contrastive=False,
                                                 mask_ratio=0.5))
  assert method.batch_keys == ("image",) and method.num_visible == 8  # 50% of 16
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0), batch)
  assert set(params) == {"encoder", "decoder"}
  assert params["decoder"]["decoder_pred"]["kernel"].shape[-1] == 48
  masks = method.make_masks(jax.random.PRNGKey(1), {"image": batch["image"]})
  _, metrics = jax.eval_shape(method.loss, params, {}, {"image": batch["image"]}, masks,
                              None, 0)
  assert set(metrics) == {"mae_loss"}
  # one decoder output for both targets, cls pooling, λ = 0.5, τ = 0.5
  method = mv.MultiViewMAE(tiny_multiview_config(cross_head="shared", pool="cls",
                                                 contrastive_weight=0.5, temperature=0.5))
  params, loss, metrics, _, out, *_, z = loss_and_parts(method, batch,
                                                         pool=lambda latents: latents[:, 0])
  assert out.shape[-1] == 48
  z = z.reshape(8, 2, -1)
  np.testing.assert_allclose(metrics["contrastive_loss"], numpy_nt_xent(z[:, 0], z[:, 1], 0.5),
                             rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["mae_loss"] + metrics["cross_loss"] +
                             0.5 * metrics["contrastive_loss"], rtol=1e-6)
  config = tiny_multiview_config()
  config.model.decoder_depth = 3
  decoder = jax.eval_shape(mv.MultiViewMAE(config).init, jax.random.PRNGKey(0), batch)["decoder"]
  assert sorted(k for k in decoder if k.startswith("decoder_blocks_")) == [
      "decoder_blocks_0", "decoder_blocks_1", "decoder_blocks_2"]
  for field, value in (("pool", "max"), ("cross_head", "both"), ("temperature", 0.0)):
    with pytest.raises(ValueError, match=f"config.method.{field}"):
      mv.MultiViewMAE(tiny_multiview_config(**{field: value}))


def test_configs_hold_the_paper_defaults():
  config = config_file("multiview_mae.py", "vit_base")
  m = config.method
  assert (m.name, m.mask_ratio, m.contrastive_weight, m.contrastive, m.two_targets) == (
      "multiview_mae", 0.8, 2.0, True, True)
  assert (config.model.width, config.model.decoder_depth, config.data.image_size) == (
      768, 8, 224)
  train_config.validate(config, 8, 1)
  assert isinstance(methods.create(config), mv.MultiViewMAE)
  small = config_file("multiview_mae.py", "cifar")
  train_config.validate(small, 8, 1)
  assert small.method.mask_ratio == 0.8 and (REPO / small.data.path).resolve() == (
      REPO.parent / "shared" / "data" / "cifar10_small.npz")


# --- training ----------------------------------------------------------------------------

def test_sharded_steps_equal_single_device_steps():
  """The whole step, NT-Xent negatives included, is the same with the batch and the
  parameters split over 8 devices (FSDP) as on one device."""
  config = tiny_multiview_config()
  config.model.depth = 1
  config.sharding.mode = "fsdp"
  config.optimizer.eps = 1e-4  # keeps float noise on zero gradients out (test_sharding.py)
  (state8, _, metrics8), _ = assert_sharded_equals_one_device(
      config, random_batch(config, b=16),
      metric_keys=("loss", "mae_loss", "cross_loss", "contrastive_loss"))
  assert len({s.device for s in state8.params["decoder"]["mask_token"].addressable_shards}) == 8
  assert metrics8[1]["loss"] < metrics8[0]["loss"]


@pytest.mark.learning
def test_multiview_mae_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """600 steps on CIFAR-10 through the trainer and the two-view pipeline (conftest
  LEARNING_SIZES): the encoder's k-NN beats the random encoder's by KNN_MARGIN; the
  contrastive loss ends far below chance, log(2B − 1), and both reconstruction losses
  below the loss of predicting each standardised patch's mean, (p²·3 − 1)/(p²·3) =
  0.995."""
  config, knn0, knn1 = learning_run("multiview_mae", cifar_npz, tmp_path)
  series = {k: scalar_series(str(tmp_path), k)
            for k in ("loss", "mae_loss", "cross_loss", "contrastive_loss", "overlap_fraction")}
  assert len(series["loss"]) == 60
  end = {k: np.mean(v[-3:]) for k, v in series.items()}
  chance = np.log(2 * config.batch_size - 1)
  assert end["contrastive_loss"] < 0.6 * chance, series["contrastive_loss"]
  assert end["contrastive_loss"] < 0.75 * series["contrastive_loss"][0], series
  assert end["mae_loss"] < min(0.95, 0.9 * series["mae_loss"][0]), series["mae_loss"]
  assert end["cross_loss"] < min(0.95, 0.9 * series["cross_loss"][0]), series["cross_loss"]
  assert end["loss"] < 0.75 * series["loss"][0], series["loss"]
  assert 0.2 < end["overlap_fraction"] < 0.9, series["overlap_fraction"]
  assert knn1 >= knn0 + KNN_MARGIN, (knn0, knn1)
