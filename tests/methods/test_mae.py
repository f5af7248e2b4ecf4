"""MAE: the loss against NumPy, masks and summaries, the scanned and bfloat16 paths, and
learning on CIFAR."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import KNN_MARGIN, learning_run, numpy_mae_loss, scalar_series, tiny_mae_config
from mim_jax import masking, methods
from mim_jax.methods import common, mae
from mim_jax.models import vit

IMAGES = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy_on_a_tiny_input(norm_pix):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  pred = rng.normal(size=(2, 4, 12)).astype(np.float32)
  mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.float32)
  target = vit.patchify(jnp.asarray(images), 2)
  got = float(mae.mae_loss(jnp.asarray(pred), target, jnp.asarray(mask), norm_pix))
  want = numpy_mae_loss(pred, images, mask, 2, norm_pix)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mae_loss_ignores_visible_patches():
  images = jnp.ones((1, 4, 4, 3))
  mask = jnp.array([[1.0, 0.0, 0.0, 0.0]])
  pred = jnp.zeros((1, 4, 12)).at[0, 1:].set(100.0)  # wrong only where visible
  assert float(mae.mae_loss(pred, vit.patchify(images, 2), mask, False)) == pytest.approx(1.0)


def test_norm_pix_target_uses_unbiased_variance():
  t = jnp.array([[[1.0, 2.0, 3.0, 4.0]]])
  out = np.asarray(common.norm_pix_target(t, eps=0.0))
  np.testing.assert_allclose(out.std(ddof=1), 1.0, rtol=1e-6)


def test_mae_method_loss_uses_the_given_mask():
  config = tiny_mae_config()
  method = mae.MAE(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  batch = {"image": images}
  params = method.init(jax.random.PRNGKey(1), batch)
  masks = method.make_masks(jax.random.PRNGKey(2), batch)
  assert masks["mask"].shape == (2, 16) and float(masks["mask"].sum()) == 2 * 12
  loss, metrics = method.loss(params, {}, batch, masks, None, 0)
  pred = method.predict(params, images, masks["mask"])
  assert pred.shape == (2, 16, 48)
  want = numpy_mae_loss(np.asarray(pred), np.asarray(images), np.asarray(masks["mask"]), 4,
                        True)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  other = method.make_masks(jax.random.PRNGKey(3), batch)
  loss_other, _ = method.loss(params, {}, batch, other, None, 0)
  assert float(loss_other) != pytest.approx(float(loss))


def test_mae_summaries_are_three_panels_in_unit_range():
  config = tiny_mae_config()
  method = mae.MAE(config)
  batch = {"image": jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))}
  params = method.init(jax.random.PRNGKey(1), batch)
  masks = method.make_masks(jax.random.PRNGKey(2), batch)
  panel = np.asarray(method.summaries(params, batch, masks)["reconstruction"])
  assert panel.shape == (2, 16, 48, 3)
  assert panel.min() >= 0.0 and panel.max() <= 1.0
  # visible patches of the reconstruction panel equal the original panel
  visible = np.asarray(masking.mask_to_indices(masks["mask"], 4)[0])
  p, gw = 4, 4
  for b in range(2):
    for v in visible[b]:
      r, c = divmod(int(v), gw)
      np.testing.assert_allclose(panel[b, r * p:(r + 1) * p, 32 + c * p:32 + (c + 1) * p],
                                 panel[b, r * p:(r + 1) * p, c * p:(c + 1) * p], atol=1e-6)


@pytest.mark.learning
def test_mae_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """600 steps on CIFAR-10 (conftest LEARNING_SIZES): the encoder's k-NN beats the random
  encoder's by KNN_MARGIN; the hidden-patch loss ends below 0.9 × its first logged value
  and below the loss of predicting each patch's mean, (p²·3 − 1)/(p²·3) = 0.995 for
  standardised 8 px targets."""
  _, knn0, knn1 = learning_run("mae", cifar_npz, tmp_path)
  losses = scalar_series(str(tmp_path), "loss")
  assert len(losses) == 60
  assert np.mean(losses[-3:]) < 0.9 * losses[0], losses
  assert np.mean(losses[-3:]) < 0.95, losses
  assert knn1 >= knn0 + KNN_MARGIN, (knn0, knn1)


def test_scanned_mae_loss_equals_unrolled_loss():
  config = tiny_mae_config()
  config.model.decoder_depth = 2
  scanned_config = tiny_mae_config()
  scanned_config.model.update(decoder_depth=2, scan_layers=True)
  method, scanned_method = methods.create(config), methods.create(scanned_config)
  batch = {"image": IMAGES}
  params = jax.jit(method.init)(jax.random.PRNGKey(3), batch)
  stacked = {"encoder": vit.stack_block_params(params["encoder"], 2),
             "decoder": vit.stack_block_params(params["decoder"], 2, "decoder_blocks")}
  assert jax.tree.structure(stacked) == jax.tree.structure(
      jax.eval_shape(scanned_method.init, jax.random.PRNGKey(3), batch))
  masks = method.make_masks(jax.random.PRNGKey(4), batch)
  loss_fn = lambda m, p: m.loss(p, {}, batch, masks, None, 0)[0]
  loss = jax.jit(functools.partial(loss_fn, method))(params)
  scanned_loss = jax.jit(functools.partial(loss_fn, scanned_method))(stacked)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_a_close_float32_loss():
  batch = {"image": IMAGES}
  bf16_config = tiny_mae_config()
  bf16_config.model.dtype = "bfloat16"
  f32, bf16 = methods.create(tiny_mae_config()), methods.create(bf16_config)
  params = jax.jit(bf16.init)(jax.random.PRNGKey(8), batch)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  masks = f32.make_masks(jax.random.PRNGKey(9), batch)

  @jax.jit
  def losses(p):
    loss_fn = lambda method: method.loss(p, {}, batch, masks, None, 0)[0]
    return loss_fn(bf16), loss_fn(f32), bf16.encode(p, IMAGES, masks["mask"])[0]

  loss, ref_loss, latents = losses(params)
  assert latents.dtype == jnp.bfloat16
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, ref_loss, rtol=3e-2)
  assert loss != ref_loss  # the compute really ran in bfloat16
