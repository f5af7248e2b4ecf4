"""mim_jax/inspection.py: the notebook's masks, cls attention, features and neighbours."""
import types

import jax
import matplotlib
import numpy as np
import pytest

from conftest import shrunk_config, tiny_mae_config
from mim_jax import inspection, methods
from mim_jax.models import vit

matplotlib.use("Agg")


def numpy_layer_norm(x, scale, bias, eps=vit.LN_EPS):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def numpy_cls_attention(tokens, attn_params, norm_params, num_heads):
  """cls row of softmax(q·kᵀ/√Dh) after LayerNorm and the fused qkv projection: [B, H, N]."""
  b, n, d = tokens.shape
  y = numpy_layer_norm(tokens, norm_params["scale"], norm_params["bias"])
  qkv = (y @ np.asarray(attn_params["qkv"]["kernel"]) + attn_params["qkv"]["bias"])
  qkv = qkv.reshape(b, n, 3, num_heads, d // num_heads)
  q, k = qkv[:, :, 0], qkv[:, :, 1]  # [B, N, H, Dh]
  logits = np.einsum("bhd,bmhd->bhm", q[:, 0], k) / np.sqrt(d // num_heads)  # [B, H, N]
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return weights / weights.sum(-1, keepdims=True)


def random_params(encoder, images, seed=0):
  params = jax.jit(encoder.init)(jax.random.PRNGKey(seed), images)["params"]
  leaves, tree = jax.tree.flatten(params)  # away from the init values, cls token included
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def test_cls_attention_is_the_last_blocks_softmax_row_of_the_cls_query():
  encoder = vit.ViTEncoder(image_size=8, patch_size=4, width=16, depth=2, num_heads=2)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3))
  params = random_params(encoder, images)
  got = inspection.cls_attention(encoder, params, images)  # [3, 2, 2, 2]
  assert got.shape == (3, 2, 2, 2)
  after_block_1 = np.asarray(jax.jit(lambda p, x: encoder.apply({"params": p}, x, block=1))(
      params, images))  # [3, 5, 16]
  block = params["blocks_1"]
  want = numpy_cls_attention(after_block_1, block["attn"], block["norm1"], 2)  # [3, 2, 5]
  np.testing.assert_allclose(got.reshape(3, 2, 4), want[:, :, 1:], rtol=1e-4, atol=1e-6)
  assert np.all(got.reshape(3, 2, 4).sum(-1) < 1.0)  # the cls→cls weight is left out


@pytest.mark.parametrize("pos_embedding", ["sincos", "shared_rel_bias"])
def test_sowing_attention_weights_leaves_the_encoder_output_unchanged(pos_embedding):
  encoder = vit.ViTEncoder(image_size=8, patch_size=4, width=16, depth=2, num_heads=2,
                           pos_embedding=pos_embedding)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  params = random_params(encoder, images)
  fused = jax.jit(encoder.apply)({"params": params}, images)
  explicit, variables = jax.jit(lambda v, x: encoder.apply(v, x, mutable=["intermediates"]))(
      {"params": params}, images)
  np.testing.assert_allclose(explicit, fused, atol=1e-5)
  sown = variables["intermediates"]
  assert sorted(sown) == ["blocks_0", "blocks_1"]
  weights = sown["blocks_0"]["attn"]["attention_weights"][0]
  assert weights.shape == (2, 2, 5, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert "intermediates" not in jax.eval_shape(encoder.init, jax.random.PRNGKey(0), images)


def test_hide_patches_greys_exactly_the_hidden_patches():
  pixels = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3) / 100
  mask = np.array([[0, 1, 0, 0], [1, 0, 0, 1]])  # 2×2 grid of 2 px patches
  got = inspection.hide_patches(pixels, mask, 2)
  want = pixels.copy()
  want[0, :2, 2:] = inspection.MASK_GREY  # image 0: top right
  want[1, :2, :2] = want[1, 2:, 2:] = inspection.MASK_GREY  # image 1: top left, bottom right
  np.testing.assert_array_equal(got, want)


def test_to_pixels_undoes_the_normalisation_and_clips():
  config = tiny_mae_config()
  config.data.mean, config.data.std = (0.5, 0.25, 0.0), (0.5, 0.5, 2.0)
  got = inspection.to_pixels(config, np.array([[[[0.0, 1.0, 0.25], [-2.0, 0.0, 1.0]]]]))
  np.testing.assert_allclose(got, [[[[0.5, 0.75, 0.5], [0.0, 0.25, 1.0]]]])


def test_nearest_neighbours_by_cosine_similarity_exclude_the_query():
  features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 2.0], [-3.0, 0.0]])
  got = inspection.nearest_neighbours(features, 2)
  np.testing.assert_array_equal(got, [[1, 2], [0, 2], [1, 0], [2, 1]])
  labels = np.array([0, 0, 1, 1])
  # nearest: 0→1, 1→0, 2→1, 3→2; all but 2→1 share the label
  assert inspection.neighbour_label_agreement(labels, got[:, :1]) == 0.75
  with pytest.raises(ValueError, match="k=4 neighbours need at least"):
    inspection.nearest_neighbours(features, 4)


def test_encoder_inputs_of_mae_latent_mim_and_multiview_mae():
  rng = jax.random.PRNGKey(0)
  mae_config = tiny_mae_config()
  mae = methods.create(mae_config)
  batch = {"image": jax.random.normal(rng, (3, 16, 16, 3))}
  masks = jax.jit(mae.make_masks)(rng, batch)
  images, mask = mae.encoder_inputs(batch, masks)
  assert images is batch["image"] and mask is masks["mask"]

  config = shrunk_config("latent_mim.py", "cifar")  # 4×4 cells of 4 px, 1 px gap: 20 px
  lmim = methods.create(config)
  batch = {"image": jax.random.normal(rng, (3, 20, 20, 3))}
  masks = jax.jit(lmim.make_masks)(rng, batch)
  images, mask = lmim.encoder_inputs(batch, masks)
  assert images.shape == (3, 16, 16, 3) and mask.shape == (3, 16)
  np.testing.assert_array_equal(images, lmim.sampled_images(batch["image"], masks))
  np.testing.assert_array_equal(mask.sum(-1), [12, 12, 12])  # targets: all but 4 visible

  config = shrunk_config("multiview_mae.py")
  mv = methods.create(config)
  batch = {"image": jax.random.normal(rng, (3, 2, 16, 16, 3))}
  masks = jax.jit(mv.make_masks)(rng, batch)
  images, mask = mv.encoder_inputs(batch, masks)
  assert images.shape == (6, 16, 16, 3) and mask.shape == (6, 16)
  np.testing.assert_array_equal(images[3], batch["image"][1, 1])  # views stay adjacent
  np.testing.assert_array_equal(mask[3], masks["mask"][1, 1])


def test_encoder_of_a_simmim_run_drops_the_mask_token_and_encodes_every_patch():
  config = shrunk_config("simmim.py")
  method = methods.create(config)
  batch = {"image": jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))}
  state = types.SimpleNamespace(params=jax.jit(method.init)(jax.random.PRNGKey(1), batch))
  encoder, params = inspection.encoder_of(method, state)
  assert "mask_token" in state.params["encoder"] and "mask_token" not in params
  features = inspection.cls_features(encoder, params, batch["image"], batch_size=1)
  want = jax.jit(encoder.apply)({"params": params}, batch["image"])[:, 0]  # [2, 32]
  np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)  # batch 1 vs 2
  assert inspection.cls_attention(encoder, params, batch["image"]).shape == (2, 4, 4, 4)


def test_encoder_of_a_scanned_run_is_unrolled_and_computes_the_same_features():
  config = tiny_mae_config()
  config.model.scan_layers = True
  method = methods.create(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  state = types.SimpleNamespace(params=jax.jit(method.init)(jax.random.PRNGKey(1),
                                                            {"image": images}))
  encoder, params = inspection.encoder_of(method, state)
  assert "blocks" in state.params["encoder"]
  assert sorted(k for k in params if k.startswith("blocks")) == ["blocks_0", "blocks_1"]
  scanned = jax.jit(method.encoder.apply)({"params": state.params["encoder"]}, images)
  np.testing.assert_allclose(inspection.cls_features(encoder, params, images), scanned[:, 0],
                             atol=1e-5)
  assert inspection.cls_attention(encoder, params, images).shape == (2, 4, 4, 4)


def test_run_images_come_from_the_train_and_eval_pipelines():
  config = tiny_mae_config()
  config.data.synthetic_eval_size = 6
  images, labels = inspection.eval_images(config, 4)
  assert images.shape == (4, 16, 16, 3) and labels.shape == (4,)
  batch = inspection.method_batch(config, methods.create(config), 4)
  np.testing.assert_array_equal(batch["image"], images)
  images, labels = inspection.eval_images(config, 8)  # only 6 in the split
  assert images.shape == (6, 16, 16, 3) and labels.shape == (6,)
  config = shrunk_config("multiview_mae.py", **{"data.synthetic_eval_size": 6})
  batch = inspection.method_batch(config, methods.create(config), 3)
  assert sorted(batch) == ["crop_box", "flip", "image"]
  assert batch["image"].shape == (3, 2, 16, 16, 3) and batch["crop_box"].shape == (3, 2, 4)


def test_plots_lay_out_one_panel_per_image_head_neighbour_and_curve():
  pixels = np.full((2, 8, 8, 3), 0.5, np.float32)
  fig = inspection.plot_image_rows({"a": pixels, "b": pixels})
  assert len(fig.axes) == 4
  fig = inspection.plot_attention(pixels, np.ones((2, 3, 2, 2)) / 4, max_heads=2)
  assert len(fig.axes) == 2 * (2 + 2)
  fig = inspection.plot_neighbours(pixels, np.array([0, 1]), np.array([[1], [0]]), [1])
  assert len(fig.axes) == 2 and fig.axes[0].get_title() == "query label 1"
  scalars = {"loss": [(1, 2.0), (2, 1.0)], "lr": [(1, 0.1), (2, 0.2)]}
  fig = inspection.plot_curves(scalars, ["loss", "missing", "lr"])
  assert [ax.get_title() for ax in fig.axes] == ["loss", "lr"]
  np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [2.0, 1.0])
  with pytest.raises(ValueError, match="logged scalars: \\['loss', 'lr'\\]"):
    inspection.plot_curves(scalars, ["accuracy"])
