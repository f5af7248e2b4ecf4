"""PCAE: token compression in the teacher, target, loss, gradients, EMA, sharding."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (KNN_MARGIN, assert_sharded_equals_one_device, assert_trees_close,
                      config_file, learning_run, random_images, scalar_series, shrunk_config)
from mim_jax import methods
from mim_jax.methods import pcae


def tiny_pcae_config(**method):
  """16 px images, 16 patches: 4 visible, 12 hidden → 6 → 3 after blocks 0 and 1."""
  return shrunk_config("pcae.py", **{f"method.{k}": v for k, v in method.items()})


def test_token_dropping_keeps_exactly_the_least_similar_tokens():
  # mean ≈ (1.5, 0, 0.2): tokens 2 (+y), 3 (+z) and 5 (−y) point away from it
  x = np.array([[[3.0, 0.0, 0.0], [3.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                 [3.0, 0.0, 0.1], [0.0, -1.0, 0.0]]], np.float32)
  mean = x[0].mean(0)
  want_scores = [v @ mean / (np.linalg.norm(v) * np.linalg.norm(mean)) for v in x[0]]
  scores = pcae.similarity_to_mean(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(scores)[0], want_scores, rtol=1e-5)
  positions = jnp.array([[10, 11, 12, 13, 14, 15]])
  kept_x, kept_pos = pcae.keep_lowest(jnp.asarray(x), positions, scores, 3)
  assert set(np.asarray(kept_pos)[0]) == {12, 13, 15}
  np.testing.assert_array_equal(np.asarray(kept_x)[0], x[0][np.asarray(kept_pos)[0] - 10])


def test_teacher_compresses_147_to_73_36_18_at_vit_base():
  config = config_file("pcae.py", "vit_base")
  method = methods.create(config)
  assert method.drop_layers == (0, 4, 8)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0), {"image": images})
  hidden = jax.ShapeDtypeStruct((2, 147), jnp.int32)
  features, kept = jax.eval_shape(method.teacher, params["encoder"], images, hidden)
  assert [k.shape[1] for k in kept] == [147, 73, 36, 18]
  assert features.shape == (2, 18, 768)
  # the prediction head is as wide as the encoder at every size (not p²·3)
  assert params["decoder"]["decoder_pred"]["kernel"].shape == (512, 768)
  large = config_file("pcae.py", "vit_large")
  large_method = methods.create(large)
  assert large_method.drop_layers == (0, 8, 16)
  large_params = jax.eval_shape(large_method.init, jax.random.PRNGKey(0), {"image": images})
  assert large_params["decoder"]["decoder_pred"]["kernel"].shape == (512, 1024)


def numpy_keep_least_similar(x, positions, num_keep):
  mean = x.mean(axis=1, keepdims=True)
  cos = (x * mean).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(mean, axis=-1))
  order = np.argsort(cos, axis=1, kind="stable")[:, :num_keep]
  return (np.take_along_axis(x, order[..., None], axis=1),
          np.take_along_axis(positions, order, axis=1))


def test_teacher_drops_after_the_configured_blocks_by_similarity_or_noise():
  config = tiny_pcae_config()
  method = methods.create(config)
  images = jnp.asarray(random_images(config)[:2])
  params = jax.jit(method.encoder.init)(jax.random.PRNGKey(0), images)["params"]
  hidden = jnp.asarray(np.stack([np.arange(12), np.arange(4, 16)]), jnp.int32)
  noise = jax.random.uniform(jax.random.PRNGKey(2), (2, 2, 12))
  teacher = jax.jit(method.teacher)
  features, kept = teacher(params, images, hidden)
  _, kept_random = teacher(params, images, hidden, noise)
  assert [k.shape[1] for k in kept] == [12, 6, 3] == [k.shape[1] for k in kept_random]
  # the same pass by hand: block 0, keep the 6 least similar (NumPy), block 1, keep 3
  apply = lambda fn, *args: np.asarray(method.encoder.apply({"params": params}, *args,
                                                            method=fn))
  x = apply(lambda m, img, idx: m.blocks[0](
      jnp.take_along_axis(m.embed(img), idx[..., None], axis=1), True), images, hidden)
  x, pos = numpy_keep_least_similar(x, np.asarray(hidden), 6)
  np.testing.assert_array_equal(pos, kept[1])
  x, pos = numpy_keep_least_similar(apply(lambda m, y: m.blocks[1](y, True), x), pos, 3)
  np.testing.assert_array_equal(pos, kept[2])
  np.testing.assert_allclose(apply(lambda m, y: m.norm(y), x), features, atol=1e-5)
  # random drop: the lowest noise among the survivors of each stage
  survivors = np.asarray(hidden)
  for stage in range(2):
    n = survivors.shape[1]
    order = np.argsort(np.asarray(noise)[:, stage, :n], axis=1)[:, :n // 2]
    survivors = np.take_along_axis(survivors, order, axis=1)
  np.testing.assert_array_equal(survivors, kept_random[-1])
  # with no drop layers the teacher keeps all hidden tokens (MAE with latent targets)
  no_drop = methods.create(tiny_pcae_config(drop_layers=()))
  assert jax.eval_shape(no_drop.teacher, params, images, hidden)[0].shape == (2, 12, 32)
  # the random option's noise comes from make_masks, a pure function of the key
  random_method = methods.create(tiny_pcae_config(random_drop=True))
  a = random_method.make_masks(jax.random.PRNGKey(5), {"image": images})
  b = random_method.make_masks(jax.random.PRNGKey(5), {"image": images})
  assert a["drop_noise"].shape == (2, 2, 12)
  np.testing.assert_array_equal(a["drop_noise"], b["drop_noise"])


@pytest.mark.parametrize("keep_ratio,message", [
    (0.0, "keep_ratio=0.0 must be in (0, 1]"),
    (1.5, "keep_ratio=1.5 must be in (0, 1]"),
    (0.1, "it leaves 0)"),  # 12 hidden patches -> int(1.2) = 1 -> int(0.1) = 0
])
def test_a_keep_ratio_that_empties_the_teacher_is_refused(keep_ratio, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    methods.create(tiny_pcae_config(keep_ratio=keep_ratio))


def test_pcae_loss_matches_numpy():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 3, 8)).astype(np.float32)
  features = 5.0 * rng.normal(size=(2, 3, 8)).astype(np.float32) + 2.0
  t = (features - features.mean(-1, keepdims=True)) / np.sqrt(
      features.var(-1, ddof=1, keepdims=True) + 1e-6)
  cos = [pred[b, i] @ t[b, i] / (np.linalg.norm(pred[b, i]) * np.linalg.norm(t[b, i]))
         for b in range(2) for i in range(3)]
  got = pcae.pcae_loss(jnp.asarray(pred), jnp.asarray(features))
  np.testing.assert_allclose(float(got), 1.0 - np.mean(cos), rtol=1e-5)
  assert float(pcae.pcae_loss(jnp.asarray(t), jnp.asarray(features))) < 1e-6


def test_no_gradient_reaches_the_teacher_and_momentum_schedule():
  config = tiny_pcae_config()
  method = methods.create(config, total_steps=100)
  batch = {"image": jnp.asarray(random_images(config)[:4])}
  params = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  teacher = jax.tree.map(lambda x: 0.9 * x, method.target_source(params))
  masks = method.make_masks(jax.random.PRNGKey(1), batch)
  grads = jax.jit(jax.grad(lambda p, t: method.loss(p, t, batch, masks, None, 0)[0],
                           argnums=(0, 1)))(params, teacher)
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads[1]))
  for part in ("encoder", "decoder"):
    assert any(np.asarray(g).any() for g in jax.tree.leaves(grads[0][part])), part
  for step, want in ((0, 0.9999), (50, 0.99995), (100, 1.0),
                     (25, 1 - 1e-4 * (1 + math.cos(math.pi / 4)) / 2)):
    np.testing.assert_allclose(float(method.target_momentum(step)), want, rtol=1e-7)


def test_sharded_fsdp_step_equals_one_device_and_teacher_follows_the_ema():
  config = tiny_pcae_config(target_momentum=0.9, drop_layers=(0,))
  config.model.depth = 1
  config.sharding.mode = "fsdp"
  config.optimizer.eps = 1e-6  # the exactly-zero key-bias gradient: see the helper
  _, (_, states1, metrics1) = assert_sharded_equals_one_device(config, random_images(config))
  m1 = 1 - 0.1 * (1 + math.cos(math.pi * 1 / 10)) / 2
  np.testing.assert_allclose(metrics1[1]["target_momentum"], m1, rtol=1e-6)
  assert_trees_close(states1[2].target_params,
                     jax.tree.map(lambda t, s: m1 * t + (1 - m1) * s,
                                  states1[1].target_params, states1[1].params["encoder"]),
                     atol=1e-6)
  for key in ("sim_target", "sim_pred", "pcae_loss"):
    assert np.isfinite(metrics1[-1][key]), key


@pytest.mark.learning
def test_pcae_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """600 steps on CIFAR-10 (conftest LEARNING_SIZES): the encoder's k-NN beats the random
  encoder's by KNN_MARGIN (a falling loss alone would not show it: a collapsed student and
  teacher also drive the latent MSE down), and the loss falls by over 40%."""
  _, knn0, knn1 = learning_run("pcae", cifar_npz, tmp_path)
  losses = scalar_series(str(tmp_path), "loss")
  assert len(losses) == 60
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
  assert knn1 >= knn0 + KNN_MARGIN, (knn0, knn1)
