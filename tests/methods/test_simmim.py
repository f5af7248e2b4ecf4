"""SimMIM: the L1 loss on hidden pixels, the mask-token encoder with a linear
head, the published recipe, sharded steps and learning on CIFAR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (KNN_MARGIN, assert_sharded_equals_one_device, config_file, learning_run,
                      random_images, scalar_series, shrunk_config)
from mim_jax import masking, methods, optim
from mim_jax.training import config as train_config
from mim_jax.methods import common, simmim


def tiny_simmim_config(**overrides):
  """16 px images, patch 4, 8 px mask cells: 4 cells, ceil(4·0.6) = 3 hidden."""
  return shrunk_config("simmim.py", **overrides)


def numpy_simmim_loss(images, recon, mask, p):
  """sum(|x − x̂|·m) / (sum(m) + 1e-5) / C with m the patch mask repeated to pixels."""
  b, h, w, c = images.shape
  num, den = 0.0, 0.0
  for i in range(b):
    for y in range(h):
      for x in range(w):
        hidden = mask[i, (y // p) * (w // p) + x // p]
        num += hidden * np.abs(images[i, y, x] - recon[i, y, x]).sum()
        den += hidden
  return num / (den + 1e-5) / c


def test_simmim_loss_matches_numpy_and_ignores_visible_pixels():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  recon = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  mask = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], np.float32)  # 2×2 grid of 4 px patches
  loss = float(simmim.simmim_loss(images, recon, mask, 4))
  assert loss == pytest.approx(numpy_simmim_loss(images, recon, mask, 4), rel=1e-5)
  recon_visible_changed = recon.copy()
  recon_visible_changed[0, :4, 4:] += 10.0  # patch 1 of image 0 is visible
  assert float(simmim.simmim_loss(images, recon_visible_changed, mask, 4)) == pytest.approx(
      loss, rel=1e-6)


def test_encoder_sees_mask_tokens_and_the_head_is_linear_per_token():
  config = tiny_simmim_config()
  method = methods.create(config)
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
  mask = masking.simmim_masking(jax.random.PRNGKey(2), 2, 16, 8, 4, 0.6)
  params = jax.jit(method.init)(jax.random.PRNGKey(0), {"image": images})
  reconstruct = jax.jit(method.reconstruct)
  recon = np.asarray(reconstruct(params, images, mask))
  # replacing the hidden pixels changes nothing: the encoder never sees them
  hidden_px = np.asarray(common.pixel_mask(mask, 4, (4, 4)))
  noisy = np.asarray(images) * (1 - hidden_px) + 5.0 * hidden_px
  np.testing.assert_allclose(reconstruct(params, jnp.asarray(noisy), mask), recon, atol=1e-5)
  # each predicted p×p×3 patch is kernel·latent + bias of that patch's token
  latents = np.asarray(jax.jit(method.encoder.apply)(
      {"params": params["encoder"]}, images, token_mask=mask))[:, 1:]  # [2, 16, 32]
  kernel, bias = (np.asarray(params["decoder"][k]) for k in ("kernel", "bias"))
  assert kernel.shape == (32, 4 * 4 * 3)
  for b, token in [(0, 0), (0, 6), (1, 15)]:
    row, col = divmod(token, 4)
    patch = (latents[b, token] @ kernel + bias).reshape(4, 4, 3)
    np.testing.assert_allclose(recon[b, 4 * row:4 * row + 4, 4 * col:4 * col + 4], patch,
                               atol=1e-5)
  loss, metrics = jax.jit(method.loss)(params, None, {"image": images}, {"mask": mask}, None,
                                       0)
  assert float(loss) == pytest.approx(
      numpy_simmim_loss(np.asarray(images), recon, np.asarray(mask), 4), rel=1e-5)
  assert float(metrics["simmim_loss"]) == float(loss)


def test_published_vit_base_recipe_and_tiny_config():
  config = config_file("simmim.py", "vit_base")
  assert config.method.mask_patch_size == 32 and config.method.mask_ratio == 0.6
  assert optim.scaled_lr(config.optimizer.base_lr, config.optimizer.lr_scaling,
                         config.batch_size) == pytest.approx(4e-4)  # 1e-4 per 512
  opt = config.optimizer
  assert (opt.b1, opt.b2, opt.weight_decay, opt.grad_clip) == (0.9, 0.999, 0.05, 5.0)
  assert (config.num_epochs, config.warmup_epochs) == (800, 10)
  lr = optim.lr_schedule_from_config(config, 4e-4, 800 * 10, 10 * 10, steps_per_epoch=10)
  assert float(lr(6999)) == pytest.approx(4e-4) and float(lr(7000)) == pytest.approx(4e-5)
  assert float(lr(0)) == pytest.approx(4e-4 * 5e-7 / 1e-4)  # WARMUP_LR 5e-7 per 512 images
  assert config.data.crop_scale == (0.67, 1.0)
  method = methods.create(config)
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                          {"image": jnp.zeros((1, 224, 224, 3))})
  enc = params["encoder"]
  assert enc["rel_pos_bias"]["relative_position_bias_table"].shape == (27 * 27 + 3, 12)
  assert enc["blocks_0"]["gamma_1"].shape == (768,)
  assert "pos_embed" not in enc and params["decoder"]["kernel"].shape == (768, 768)
  decay = optim.decay_mask(params, opt.no_decay_patterns)
  assert decay["encoder"]["mask_token"] and decay["encoder"]["rel_pos_bias"][
      "relative_position_bias_table"]  # as optimizer.py `get_pretrain_param_groups`
  assert not decay["encoder"]["cls_token"] and not decay["encoder"]["blocks_0"]["gamma_1"]
  tiny = tiny_simmim_config()
  train_config.validate(tiny, 8, 1)
  assert methods.create(tiny).encoder.pos_embedding == "shared_rel_bias"


def test_sharded_steps_equal_single_device_steps():
  config = tiny_simmim_config()
  config.optimizer.eps = 1e-6  # the exactly-zero key-bias gradient: see the helper
  (state8, _, _), _ = assert_sharded_equals_one_device(config, random_images(config))
  table = state8.params["encoder"]["rel_pos_bias"]["relative_position_bias_table"]
  assert np.abs(np.asarray(table)).max() > 0  # the bias is trained (from zeros)


@pytest.mark.learning
def test_simmim_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """600 steps on CIFAR-10 (conftest LEARNING_SIZES, one 8 px patch per mask cell): the
  encoder's k-NN beats the random encoder's by KNN_MARGIN; the hidden-pixel L1 falls
  from ≈0.8 (what predicting the mean colour scores on standardised pixels) to under
  0.7, and by over 20%."""
  _, knn0, knn1 = learning_run("simmim", cifar_npz, tmp_path)
  losses = scalar_series(str(tmp_path), "loss")
  assert len(losses) == 60
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
  assert np.mean(losses[-3:]) < 0.7, losses
  assert knn1 >= knn0 + KNN_MARGIN, (knn0, knn1)
