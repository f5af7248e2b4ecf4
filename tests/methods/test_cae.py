"""CAE: the regressor's official block order, the loss against NumPy, the stop-gradient
alignment target, tokenizer targets, the published recipe, sharded steps and learning on
CIFAR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from conftest import (KNN_MARGIN, assert_sharded_equals_one_device, config_file, learning_run,
                      random_images, scalar_series, shrunk_config)
from mim_jax import methods, optim
from mim_jax.training import config as train_config
from mim_jax.models import cae as cae_models
from mim_jax.models import vit


def tiny_cae_config(**overrides):
  """CAE's ViT-B recipe shrunk: 16 px images, patch 4: 8 of 16 patches hidden in blocks of >= 4;
  encoder 32 wide, regressor and decoder (1 block each) 16 wide, so latents pass the
  projection."""
  return shrunk_config("cae.py", **overrides)


def toy_tokenizer(images):
  """Ids 0..7 from each 4×4 patch's mean value: a stand-in for a dVAE."""
  means = vit.patchify(images, 4).mean(axis=-1)  # [B, N]
  return jnp.clip(jnp.floor((means + 1.0) * 4.0), 0, 7).astype(jnp.int32)


def perturbed(params, seed=0):
  """Params with every leaf moved off its initial value (γ ≠ 0.1, LN ≠ identity)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(x + 0.2 * rng.normal(size=x.shape), jnp.float32),
                      params)


def np_params(params):
  return jax.tree.map(np.asarray, params)


def np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def np_layer_norm(x, p):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def np_mlp(x, p):
  h = np_dense(x, p["fc1"])
  return np_dense(0.5 * h * (1 + erf(h / np.sqrt(2))), p["fc2"])


def np_cross_attention(x_q, x_k, x_v, p, heads):
  def split(t):  # [B, L, D] -> [B, H, L, Dh]
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(0, 2, 1, 3)
  q, k, v = split(np_dense(x_q, p["q"])), split(np_dense(x_k, p["k"])), split(np_dense(x_v, p["v"]))
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  out = (w / w.sum(-1, keepdims=True)) @ v  # [B, H, M, Dh]
  return np_dense(out.transpose(0, 2, 1, 3).reshape(x_q.shape), p["proj"])


def np_regressor(z_visible, visible_idx, hidden_idx, p, grid_hw, heads):
  """modeling_cae.py / modeling_cae_helper.py `LatentRegresser` written out in NumPy."""
  z = np_layer_norm(np_dense(z_visible, p["encoder_to_regressor"]),
                    p["encoder_to_regressor_norm"])  # [B, K, D]
  pos = vit.sincos_2d(z.shape[-1], grid_hw)
  pos_q = pos[hidden_idx]  # [B, M, D]
  pos_kv = np.concatenate([pos[visible_idx], pos_q], axis=1)
  x = np.broadcast_to(p["mask_token"], pos_q.shape)
  for i in range(len([k for k in p if k.startswith("regressor_blocks_")])):
    b = p[f"regressor_blocks_{i}"]
    kv = np.concatenate([z, x], axis=1)  # the visible latents stay as the encoder left them
    y = np_cross_attention(np_layer_norm(x + pos_q, b["norm1_q"]),
                           np_layer_norm(kv + pos_kv, b["norm1_k"]),
                           np_layer_norm(kv, b["norm1_v"]), b["cross_attn"], heads)
    x = np_layer_norm(x + b["gamma_1_cross"] * y, b["norm2_cross"])
    x = x + b["gamma_2_cross"] * np_mlp(x, b["mlp_cross"])
  return np_layer_norm(x, p["norm"])


def split_mask(mask):
  """Visible and hidden positions of each row in ascending order."""
  return (np.stack([np.flatnonzero(row == 0) for row in mask]),
          np.stack([np.flatnonzero(row == 1) for row in mask]))


def setup(config, seed=0):
  method = methods.create(config)
  images = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 16, 16, 3)), jnp.float32)
  batch = {"image": images}
  mask = np.asarray(jax.jit(method.make_masks)(jax.random.PRNGKey(seed + 1), batch)["mask"])
  params = perturbed(jax.jit(method.init)(jax.random.PRNGKey(seed), batch), seed)
  return method, images, mask, params


@pytest.fixture(scope="module")
def pixel_cae():
  return setup(tiny_cae_config())


def test_regressor_matches_numpy_with_the_official_block_order():
  regressor = cae_models.LatentRegressor(grid_hw=(4, 4), encoder_width=32, width=16, depth=2,
                                         num_heads=2)
  rng = np.random.default_rng(0)
  mask = np.zeros((2, 16), np.float32)
  mask[0, [0, 1, 4, 5, 9, 10]] = mask[1, [6, 7, 11, 14, 15, 3]] = 1
  visible_idx, hidden_idx = split_mask(mask)
  z = rng.normal(size=(2, 10, 32)).astype(np.float32)
  params = perturbed(jax.jit(regressor.init)(jax.random.PRNGKey(0), z, visible_idx,
                                             hidden_idx)["params"])
  out = jax.jit(regressor.apply)({"params": params}, z, visible_idx, hidden_idx)
  assert out.shape == (2, 6, 16)
  expected = np_regressor(z, visible_idx, hidden_idx, np_params(params), (4, 4), heads=2)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def pixel_targets(images, hidden_idx, p=4):
  """Hidden patches as (p, p, C) vectors, each standardised with ddof=1 and eps 1e-6."""
  b, h, w, c = images.shape
  out = []
  for i in range(b):
    rows = []
    for token in hidden_idx[i]:
      r, col = divmod(token, w // p)
      patch = images[i, r * p:(r + 1) * p, col * p:(col + 1) * p].reshape(-1)
      rows.append((patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 1e-6))
    out.append(rows)
  return np.asarray(out)


def test_loss_is_reconstruction_plus_twice_the_alignment_mse(pixel_cae):
  method, images, mask, params = pixel_cae
  np.testing.assert_array_equal(mask.sum(axis=1), 8)
  visible_idx, hidden_idx = split_mask(mask)
  predict = jax.jit(method.predict)
  target_fn = jax.jit(method.latent_target)
  loss, metrics = jax.jit(method.loss)(params, None, {"image": images}, {"mask": mask}, None,
                                       0)
  pred, latents = (np.asarray(a) for a in predict(params, images, visible_idx, hidden_idx))
  assert pred.shape == (2, 8, 48) and latents.shape == (2, 8, 16)
  p = np_params(params)
  z_hidden = np.asarray(jax.jit(method.encoder.apply)(
      {"params": params["encoder"]}, images, hidden_idx))[:, 1:]  # F(hidden patches)
  target = np_layer_norm(np_dense(z_hidden, p["regressor"]["encoder_to_regressor"]),
                         p["regressor"]["encoder_to_regressor_norm"])
  recon = np.mean((pred - pixel_targets(np.asarray(images), hidden_idx)) ** 2)
  align = np.mean((latents - target) ** 2)
  assert float(metrics["loss_main"]) == pytest.approx(recon, rel=1e-5)
  assert float(metrics["loss_align"]) == pytest.approx(2.0 * align, rel=1e-5)
  assert float(loss) == pytest.approx(recon + 2.0 * align, rel=1e-5)
  # F sees only its own patches: predictions ignore hidden pixels, targets visible ones
  hidden_px = np.kron(mask.reshape(2, 4, 4), np.ones((4, 4)))[:, :, :, None]  # [B, H, W, 1]
  noise = 3.0 * np.random.default_rng(5).normal(size=images.shape).astype(np.float32)
  np.testing.assert_allclose(predict(params, images + noise * hidden_px, visible_idx,
                                     hidden_idx)[1], latents, atol=1e-5)
  np.testing.assert_allclose(target_fn(params, images + noise * (1 - hidden_px), hidden_idx),
                             target, atol=1e-4)


def test_no_gradient_reaches_the_encoder_through_the_alignment_target(pixel_cae):
  method, images, mask, params = pixel_cae
  visible_idx, hidden_idx = split_mask(mask)
  weights = jax.random.normal(jax.random.PRNGKey(7), (2, 8, 16))
  frozen = np.asarray(jax.jit(method.latent_target)(params, images, hidden_idx))
  targets = pixel_targets(np.asarray(images), hidden_idx)

  def through_target(p):  # only the alignment target's path
    return jnp.sum(method.latent_target(p, images, hidden_idx) * weights)

  def without_stop_gradient(p):  # the same path with the encoder's params live
    z = method.encoder.apply({"params": p["encoder"]}, images, hidden_idx)[:, 1:]
    return jnp.sum(z * weights[..., :1])

  def loss(p):
    return method.loss(p, None, {"image": images}, {"mask": mask}, None, 0)[0]

  def frozen_loss(p):  # the loss with the target frozen as a constant
    pred, latents = method.predict(p, images, visible_idx, hidden_idx)
    return jnp.mean((pred - targets) ** 2) + 2.0 * jnp.mean((latents - frozen) ** 2)

  grads = jax.jit(lambda p: [jax.grad(f)(p) for f in (
      through_target, without_stop_gradient, loss, frozen_loss)])(params)
  for leaf in jax.tree.leaves(grads[0]):
    assert not np.asarray(leaf).any()  # exactly zero, every parameter
  assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(grads[1])) > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads[2], grads[3])
  assert np.abs(np.asarray(grads[2]["encoder"]["patch_embed"]["kernel"])).max() > 1e-4


def test_tokenizer_targets_use_cross_entropy_over_the_ids(pixel_cae):
  config = tiny_cae_config()
  config.method.update(target="tokenizer", tokenizer="test_cae:toy_tokenizer", vocab_size=8)
  method = methods.create(config)
  _, images, mask, params = pixel_cae
  head = {"kernel": np.random.default_rng(4).normal(size=(16, 8)).astype(np.float32),
          "bias": np.zeros(8, np.float32)}
  params = {**params, "decoder": {**params["decoder"], "head": head}}  # 8 logits per patch
  visible_idx, hidden_idx = split_mask(mask)
  _, metrics = jax.jit(method.loss)(params, None, {"image": images}, {"mask": mask}, None, 0)
  logits = np.asarray(jax.jit(method.predict)(params, images, visible_idx, hidden_idx)[0])
  assert logits.shape == (2, 8, 8)
  ids = np.take_along_axis(np.asarray(toy_tokenizer(images)), hidden_idx, axis=1)
  assert len(np.unique(ids)) > 2
  top = logits.max(-1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  ce = np.mean(log_z - np.take_along_axis(logits, ids[..., None], axis=-1)[..., 0])
  assert float(metrics["loss_main"]) == pytest.approx(ce, rel=1e-5)
  assert float(metrics["mlm_acc"]) == pytest.approx(np.mean(logits.argmax(-1) == ids))
  assert method.summaries(params, {"image": images}, {"mask": mask}) == {}
  for target, tokenizer, message in (("tokenizer", None, "tokenizer"),
                                     ("dvae", None, "target")):
    config.method.update(target=target, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=message):
      methods.create(config)


def test_published_vit_base_recipe_and_tiny_config():
  config = config_file("cae.py", "vit_base")
  opt = config.optimizer
  assert optim.scaled_lr(opt.base_lr, opt.lr_scaling, config.batch_size) == 1.5e-3
  assert (opt.b1, opt.b2, opt.weight_decay, opt.grad_clip, opt.min_lr) == (
      0.9, 0.999, 0.05, 3.0, 1e-5)
  assert (config.batch_size, config.num_epochs, config.warmup_epochs) == (2048, 800, 20)
  assert [config_file("cae.py", f"vit_base_{e}ep").warmup_epochs for e in (300, 1600)] == [
      10, 40]
  with pytest.raises(ValueError, match="choose one of"):
    config_file("cae.py", "vit_base_400ep")
  assert config.data.crop_scale == (0.08, 1.0) and config.method.align_weight == 2.0
  method = methods.create(config)
  assert (method.num_masking, method.num_visible) == (98, 98)
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                          {"image": jnp.zeros((1, 224, 224, 3))})
  assert sorted(k for k in params["regressor"] if k.startswith("regressor_blocks")) == [
      f"regressor_blocks_{i}" for i in range(4)]
  assert "encoder_to_regressor" not in params["regressor"]  # 768 wide throughout
  assert params["decoder"]["head"]["kernel"].shape == (768, 16 * 16 * 3)
  assert params["decoder"]["decoder_blocks_3"]["gamma_1"].shape == (768,)
  assert params["encoder"]["blocks_11"]["gamma_2"].shape == (768,)
  decay = optim.decay_mask(params, opt.no_decay_patterns)  # optim_factory.py, no skip list
  assert decay["encoder"]["cls_token"] and decay["regressor"]["mask_token"]
  assert not decay["regressor"]["regressor_blocks_0"]["gamma_1_cross"]
  small = config_file("cae.py", "cifar")  # 64 patches of 32 px images
  train_config.validate(small, 8, 1)
  assert methods.create(small).num_masking == 32


def test_sharded_steps_equal_single_device_steps():
  config = tiny_cae_config()
  config.optimizer.eps = 1e-6  # the exactly-zero key-bias gradient: see the helper
  (state8, _, _), _ = assert_sharded_equals_one_device(config, random_images(config))
  assert state8.target_params == {}  # the alignment target needs no EMA copy


@pytest.mark.learning
def test_cae_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """600 steps on CIFAR-10 (conftest LEARNING_SIZES; 8 of 16 patches hidden in blocks of
  >= 4): the encoder's k-NN beats the random encoder's by KNN_MARGIN; the loss falls by
  over 25%, and its reconstruction part (MSE on standardised patches, ≈1 for a constant
  prediction) by over 10%."""
  _, knn0, knn1 = learning_run("cae", cifar_npz, tmp_path)
  losses, recon = (scalar_series(str(tmp_path), tag) for tag in ("loss", "loss_main"))
  assert len(losses) == len(recon) == 60
  assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:2]), losses
  assert np.mean(recon[-3:]) < 0.9 * np.mean(recon[:2]), (recon, losses)
  assert knn1 >= knn0 + KNN_MARGIN, (knn0, knn1)
