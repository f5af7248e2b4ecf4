"""Latent MIM: grid-with-gap sampling, losses, target modes, decoders, EMA, sharding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (KNN_MARGIN, assert_sharded_equals_one_device, assert_trees_close,
                      config_file, event_tags, learning_run, random_images, scalar_series,
                      shrunk_config)
from mim_jax import masking, methods, pretrain
from mim_jax.methods import common, latent_mim
from mim_jax.models import query_decoder


def tiny_latent_config(**method):
  """Latent MIM's ViT-B recipe shrunk, mask 0.75, with `method` fields: 4×4 grid of 4 px
  patches with a 1 px gap (20 px images), 4 visible, 12 targets; one 32-wide block in the
  encoder, one 16-wide in the decoder."""
  return shrunk_config("latent_mim.py", depth=1, **{
      "method.mask_ratio": 0.75, **{f"method.{k}": v for k, v in method.items()}})


# --- masking ---------------------------------------------------------------------------

def test_grid_gap_crop_takes_one_window_per_cell_and_windows_never_touch():
  p, gap, grid = 4, 2, 3
  cell = p + gap
  images = np.random.default_rng(0).normal(size=(2, grid * cell, grid * cell, 3))
  offsets = np.asarray(masking.grid_gap_offsets(jax.random.PRNGKey(0), 2, (grid, grid), gap))
  assert offsets.shape == (2, grid, grid, 2) and offsets.dtype == np.int32
  crop = np.asarray(masking.grid_gap_crop(jnp.asarray(images, jnp.float32),
                                          jnp.asarray(offsets), p, gap))
  assert crop.shape == (2, grid * p, grid * p, 3)
  for b in range(2):
    for i in range(grid):
      for j in range(grid):
        top, left = i * cell + offsets[b, i, j, 0], j * cell + offsets[b, i, j, 1]
        np.testing.assert_allclose(crop[b, i * p:(i + 1) * p, j * p:(j + 1) * p],
                                   images[b, top:top + p, left:left + p], atol=1e-6)
  # every offset in [0, gap) is drawn, nothing else: a window stays inside its cell and
  # at least one pixel separates the windows of neighbouring cells
  many = np.asarray(masking.grid_gap_offsets(jax.random.PRNGKey(1), 64, (grid, grid), gap))
  assert set(np.unique(many)) == set(range(gap))
  starts = np.arange(grid)[None, :, None] * cell + many[..., 0]  # [B, rows, cols]
  assert (starts[:, 1:] - (starts[:, :-1] + p)).min() >= 1
  # gap 0 is the ordinary contiguous patch grid
  zero = masking.grid_gap_offsets(jax.random.PRNGKey(0), 2, (grid, grid), 0)
  assert not np.asarray(zero).any()
  flat = images[:, :grid * p, :grid * p].astype(np.float32)
  np.testing.assert_array_equal(masking.grid_gap_crop(jnp.asarray(flat), zero, p, 0), flat)


def test_published_geometry_and_visible_target_split_by_count():
  config = config_file("latent_mim.py", "vit_base")
  assert config.data.image_size == 280  # 14·(16 + 4)
  method = methods.create(config)
  assert (method.num_patches, method.num_visible, method.encoder.image_size) == (196, 20, 224)
  config.method.patch_gap = 0
  assert config.data.image_size == 224  # the image side follows the gap
  config.method.mask_ratio = 0.75
  assert methods.create(config).num_visible == 49
  mask = masking.random_split(jax.random.PRNGKey(0), 8, 196, 20)
  np.testing.assert_array_equal(np.asarray(mask).sum(axis=1), 176)
  visible, targets, _ = masking.mask_to_indices(mask, 20)
  both = np.concatenate([np.asarray(visible), np.asarray(targets)], axis=1)
  np.testing.assert_array_equal(np.sort(both, axis=1), np.tile(np.arange(196), (8, 1)))


def test_bad_latent_mim_configs_fail_with_a_message():
  config = tiny_latent_config()
  config.data.image_size = 24  # not a multiple of 4 + 1
  with pytest.raises(ValueError, match="config.method.patch_gap = 5"):
    methods.create(config)
  with pytest.raises(ValueError, match="config.method.mask_ratio=1.0"):
    methods.create(tiny_latent_config(mask_ratio=1.0))
  for field, value in (("target_mode", "ema"), ("loss", "cosine"), ("decoder", "mlp")):
    with pytest.raises(ValueError, match=f"config.method.{field}"):
      methods.create(tiny_latent_config(**{field: value}))


# --- losses ----------------------------------------------------------------------------

def numpy_cosine(a, b):
  return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def numpy_patch_disc(pred, target, tau):
  total, count = 0.0, 0
  for b in range(pred.shape[0]):
    z_hat = (pred[b] - pred[b].mean(0)) / (pred[b].std(0, ddof=1) + 1e-4)
    for i in range(pred.shape[1]):
      logits = np.array([numpy_cosine(z_hat[i], target[b, j]) / tau
                         for j in range(pred.shape[1])])
      total += -(logits[i] - np.log(np.exp(logits).sum()))
      count += 1
  return total / count * 2 * tau


def numpy_mean_pairwise_cosine(x):
  return np.mean([numpy_cosine(x[b, i], x[b, j]) for b in range(x.shape[0])
                  for i in range(x.shape[1]) for j in range(x.shape[1])])


def test_patch_disc_matches_numpy():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 5, 8)).astype(np.float32)
  target = rng.normal(size=(2, 5, 8)).astype(np.float32)
  got = float(latent_mim.patch_disc_loss(jnp.asarray(pred), jnp.asarray(target), 0.2))
  np.testing.assert_allclose(got, numpy_patch_disc(pred, target, 0.2), rtol=1e-5)
  # predicting each target (up to the per-token standardisation) beats a shuffled match
  aligned = float(latent_mim.patch_disc_loss(jnp.asarray(target), jnp.asarray(target), 0.2))
  shuffled = float(latent_mim.patch_disc_loss(jnp.asarray(target[:, ::-1]),
                                              jnp.asarray(target), 0.2))
  assert aligned < shuffled


def test_similarity_regulariser_and_its_goal_schedule_match_numpy():
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(2, 4, 6)).astype(np.float32) + 1.0
  visible = rng.normal(size=(2, 3, 6)).astype(np.float32)
  np.testing.assert_allclose(float(common.mean_pairwise_cosine(jnp.asarray(pred))),
                             numpy_mean_pairwise_cosine(pred), rtol=1e-5)
  for step, total, goal in ((0, 100, 0.75), (50, 100, 0.5), (100, 100, 0.25),
                            (25, 100, 0.25 + 0.25 * (1 + math.cos(math.pi / 4)))):
    np.testing.assert_allclose(float(latent_mim.cosine_decay(step, total, 0.75, 0.25)), goal,
                               rtol=1e-6)
  want = 0.1 * ((numpy_mean_pairwise_cosine(pred) - 0.6)**2 +
                (numpy_mean_pairwise_cosine(visible) - 0.6)**2)
  got = latent_mim.similarity_regulariser(jnp.asarray(pred), jnp.asarray(visible), 0.6, 0.1)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mse", "l1", "huber"])
def test_regression_losses_match_numpy(kind):
  rng = np.random.default_rng(2)
  pred = 2.0 * rng.normal(size=(2, 3, 8)).astype(np.float32)
  target = rng.normal(size=(2, 3, 8)).astype(np.float32) * 3 + 1
  t = (target - target.mean(-1, keepdims=True)) / np.sqrt(
      target.var(-1, ddof=1, keepdims=True) + 1e-6)
  d = np.abs(pred - t)
  want = {"mse": (d**2).mean(), "l1": d.mean(),
          "huber": np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean()}[kind]
  got = latent_mim.regression_loss(jnp.asarray(pred), jnp.asarray(target), kind, 1.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# --- target modes, EMA -----------------------------------------------------------------

def test_momentum_schedule_values():
  method = methods.create(tiny_latent_config(), total_steps=100)
  for step, want in ((0, 0.99), (50, 0.995), (100, 1.0),
                     (25, 1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2)):
    np.testing.assert_allclose(float(method.target_momentum(step)), want, rtol=1e-7)


def test_target_modes_route_gradients_as_the_ablation_ladder_says():
  config = tiny_latent_config(sim_reg_coeff=0.0)
  batch = {"image": jnp.asarray(random_images(config)[:4])}
  key = jax.random.PRNGKey(0)
  by_mode = {}
  for mode in latent_mim.TARGET_MODES:
    config.method.target_mode = mode
    by_mode[mode] = methods.create(config)
  assert set(jax.eval_shape(by_mode["momentum"].init, key, batch)) == {
      "encoder", "projector", "decoder"}
  assert by_mode["stopgrad"].target_source({"encoder": 0, "projector": 0}) is None
  params = jax.jit(by_mode["separate"].init)(key, batch)  # every part any mode reads
  assert set(params) == {"encoder", "projector", "decoder", "target"}
  # EMA targets equal to the online weights: only the gradient paths differ
  ema = jax.tree.map(jnp.copy, by_mode["momentum"].online(params))
  masks = by_mode["momentum"].make_masks(jax.random.PRNGKey(1), batch)

  @jax.jit
  def all_grads(params, ema):
    return {mode: jax.grad(lambda p, t: method.loss(p, t, batch, masks, None, 0)[0],
                           argnums=(0, 1))(params, ema)
            for mode, method in by_mode.items()}

  grads = all_grads(params, ema)
  # momentum: not one nonzero gradient reaches the EMA parameters
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads["momentum"][1]))
  assert any(np.asarray(g).any() for g in jax.tree.leaves(grads["momentum"][0]["encoder"]))
  # stop-grad: the online weights as targets, nothing through the target branch
  assert_trees_close(grads["stopgrad"][0], grads["momentum"][0], atol=1e-7)
  # joint (naive): the target branch adds a gradient to the shared encoder
  diff = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                      grads["joint"][0]["encoder"], grads["stopgrad"][0]["encoder"])
  assert max(jax.tree.leaves(diff)) > 1e-4
  # separate weights: the second encoder is trained by the same loss; no other mode
  # touches it
  assert any(np.asarray(g).any() for g in jax.tree.leaves(grads["separate"][0]["target"]))
  for mode in ("momentum", "stopgrad", "joint"):
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads[mode][0]["target"]))


# --- decoder ---------------------------------------------------------------------------

def test_visual_cues_are_a_position_softmax_average_of_visible_latents():
  rng = np.random.default_rng(3)
  pos_q, pos_k = rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 3, 4))
  values = rng.normal(size=(1, 3, 4))
  logits = pos_q[0] @ pos_k[0].T / 2.0  # √4
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  got = query_decoder.visual_cues(*(jnp.asarray(a, jnp.float32) for a in (pos_q, pos_k,
                                                                          values)))
  np.testing.assert_allclose(np.asarray(got)[0], weights @ values[0], rtol=1e-5)


@pytest.mark.parametrize("decoder", sorted(latent_mim.DECODERS))
def test_decoder_variants(decoder):
  cross, cues = latent_mim.DECODERS[decoder]
  rng = jax.random.PRNGKey(0)
  latents = jax.random.normal(rng, (2, 1 + 3, 8))
  visible = jnp.array([[0, 5, 9], [1, 2, 3]])
  queries = jnp.array([[1, 2, 15, 7], [0, 8, 4, 12]])
  dec = query_decoder.QueryDecoder(grid_hw=(4, 4), out_dim=8, width=16, depth=1,
                                   num_heads=2, cross_attention=cross, visual_cues=cues)
  params = dec.init(rng, latents, visible, queries)["params"]
  assert not np.asarray(params["mask_token"]).any()  # zero init (LatentMIM CrossDecoder)
  assert ("cross_attn" in params["decoder_blocks_0"]) == cross
  assert ("cls_token" in params) == cross
  out = dec.apply({"params": params}, latents, visible, queries)
  assert out.shape == (2, 4, 8)
  # a prediction belongs to its query position: permuting queries permutes predictions
  perm = jnp.array([2, 0, 3, 1])
  np.testing.assert_allclose(dec.apply({"params": params}, latents, visible, queries[:, perm]),
                             out[:, perm], atol=1e-5)
  # without blocks, only the visual cue lets the visible latents reach the queries
  shallow = query_decoder.QueryDecoder(grid_hw=(4, 4), out_dim=8, width=16, depth=0,
                                       cross_attention=cross, visual_cues=cues)
  shallow_params = shallow.init(rng, latents, visible, queries)
  moved = shallow.apply(shallow_params, latents + 1.0, visible, queries)
  changed = not np.allclose(moved, shallow.apply(shallow_params, latents, visible, queries))
  assert changed == cues


# --- the train step --------------------------------------------------------------------

def test_sharded_step_equals_one_device_and_targets_follow_the_ema():
  config = tiny_latent_config()
  config.optimizer.eps = 1e-6  # the exactly-zero key-bias gradient: see the helper
  _, (_, states1, metrics1) = assert_sharded_equals_one_device(config, random_images(config))
  # EMA before the loss: step 0 copies (m·init + (1 − m)·init), step 1 mixes in the
  # online weights after step 0, with m from the cosine schedule over the 10 steps
  m1 = 1 - 0.01 * (1 + math.cos(math.pi * 1 / 10)) / 2
  np.testing.assert_allclose(metrics1[1]["target_momentum"], m1, rtol=1e-6)
  online = lambda s: {"encoder": s.params["encoder"], "projector": s.params["projector"]}
  assert_trees_close(states1[1].target_params, online(states1[0]), atol=1e-6)
  assert_trees_close(states1[2].target_params,
                     jax.tree.map(lambda t, s: m1 * t + (1 - m1) * s,
                                  states1[1].target_params, online(states1[1])), atol=1e-6)
  for key in ("sim_target", "sim_pred", "sim_visible", "sim_regulariser", "latent_loss"):
    assert np.isfinite(metrics1[-1][key]), key


def test_collapse_monitor_regulariser_goal_and_lr_floor_reach_tensorboard(tmp_path):
  config = tiny_latent_config()
  config.update(num_train_steps=4, warmup_steps=1, checkpoint_every_steps=4,
                image_summary_every_steps=0)
  assert (config.optimizer.min_lr_ratio, config.optimizer.warmup_start_ratio) == (0.25, 0.25)
  pretrain.run(config, str(tmp_path))
  tags = event_tags(str(tmp_path))
  for tag in ("sim_target", "sim_pred", "sim_visible", "sim_regulariser", "sim_goal",
              "target_momentum", "latent_loss"):
    assert tag in tags, tags
  steps = np.arange(4)  # state.step of the logged steps 1..4
  np.testing.assert_allclose(scalar_series(str(tmp_path), "sim_goal"),
                             0.25 + 0.25 * (1 + np.cos(np.pi * steps / 4)), rtol=1e-5)
  peak = 1.5e-4 * config.batch_size / 256
  floor = 0.25 * peak
  progress = np.clip((steps - 1) / 3, 0, 1)  # the warmup (step 0) starts at the floor too
  want = np.where(steps < 1, floor, floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * progress)))
  np.testing.assert_allclose(scalar_series(str(tmp_path), "lr"), want, rtol=1e-5)


@pytest.mark.learning
def test_latent_mim_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """400 steps on CIFAR-10 (conftest LEARNING_CHECKS): the encoder's k-NN beats the random
  encoder's by KNN_MARGIN; the patch-discrimination loss falls, and the predictions'
  mean pairwise cosine (`sim_pred`, 1 for a collapsed predictor) ends below 0.5."""
  _, knn0, knn1 = learning_run("latent_mim", cifar_npz, tmp_path)
  losses, sim_pred = (scalar_series(str(tmp_path), tag) for tag in ("loss", "sim_pred"))
  assert len(losses) == 40
  assert np.mean(losses[-3:]) < 0.95 * np.mean(losses[:2]), losses
  assert np.mean(sim_pred[-3:]) < 0.5, sim_pred
  assert knn1 >= knn0 + KNN_MARGIN, (knn0, knn1)
