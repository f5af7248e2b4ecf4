import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_mae_config
from mim_jax import masking
from mim_jax.methods import common, mae
from mim_jax.models import vit


def numpy_mae_loss(pred, images, mask, p, norm_pix):
  """Independent reference: patchify with explicit loops, unbiased variance."""
  b, h, w, c = images.shape
  target = np.zeros((b, (h // p) * (w // p), p * p * c))
  for n in range(b):
    k = 0
    for i in range(h // p):
      for j in range(w // p):
        target[n, k] = images[n, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(-1)
        k += 1
  if norm_pix:
    mu = target.mean(-1, keepdims=True)
    var = ((target - mu) ** 2).sum(-1, keepdims=True) / (target.shape[-1] - 1)
    target = (target - mu) / np.sqrt(var + 1e-6)
  per_patch = ((pred - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


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
