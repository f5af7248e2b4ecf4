"""mim_jax/evaluation/features.py and the encoder's intermediate-block output: sharded
feature extraction, pooling, padding rows dropped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.evaluation import features
from mim_jax.models import vit


def test_intermediate_block_output_and_extracted_features():
  encoder = vit.ViTEncoder(image_size=8, patch_size=4, width=16, depth=3, num_heads=2)
  images = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 3))
  params = encoder.init(jax.random.PRNGKey(1), images)["params"]
  x = encoder.apply({"params": params}, images,
                    method=lambda m, im: m.prepend_cls(m.embed(im)))
  block = vit.Block(num_heads=2)
  for i in range(2):
    x = block.apply({"params": params[f"blocks_{i}"]}, x)
  second = encoder.apply({"params": params}, images, block=2)
  np.testing.assert_allclose(second, x, atol=1e-5)
  for i in range(2, 3):
    x = block.apply({"params": params[f"blocks_{i}"]}, x)
  final = nn_layer_norm(params["norm"], x)
  np.testing.assert_allclose(encoder.apply({"params": params}, images), final, atol=1e-5)
  np.testing.assert_allclose(encoder.apply({"params": params}, images, block=3), x,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r"\[1, 3\]"):
    encoder.apply({"params": params}, images, block=4)

  # Sharded extraction over 8 devices, padding rows (valid=False) dropped.
  valid = np.arange(16) % 5 != 4
  batches = [{"image": np.asarray(images[:8]), "label": np.arange(8), "valid": valid[:8]},
             {"image": np.asarray(images[8:]), "label": np.arange(8, 16), "valid": valid[8:]}]
  tokens, labels = features.extract_features(encoder, params, batches, pool="tokens", block=2)
  assert labels.tolist() == np.arange(16)[valid].tolist()
  np.testing.assert_allclose(tokens, np.asarray(second)[valid], atol=1e-5)
  cls, _ = features.extract_features(encoder, params, batches, pool="cls", block=2)
  mean, _ = features.extract_features(encoder, params, batches, pool="mean", block=2)
  np.testing.assert_allclose(cls, tokens[:, 0], atol=1e-6)
  np.testing.assert_allclose(mean, tokens[:, 1:].mean(1), atol=1e-6)
  with pytest.raises(ValueError, match="pool="):
    features.extract_features(encoder, params, batches, pool="max")


def nn_layer_norm(params, x, eps=vit.LN_EPS):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * params["scale"] + params["bias"]


def test_pixel_features_flatten_the_images_or_cut_them_into_patch_tokens():
  images = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  batches = [{"image": images, "label": np.array([3, 1]), "valid": np.array([True, False])},
             {"image": images + 1, "label": np.array([0, 2])}]
  flat, labels = features.pixel_features(batches)
  assert labels.tolist() == [3, 0, 2] and flat.shape == (3, 192)
  np.testing.assert_array_equal(flat[:2], [images[0].ravel(), images[0].ravel() + 1])
  tokens, labels = features.pixel_features(batches, patch_size=4)
  assert labels.tolist() == [3, 0, 2] and tokens.shape == (3, 4, 48)
  np.testing.assert_array_equal(tokens[0, 1], images[0, :4, 4:].ravel())  # top right
  np.testing.assert_array_equal(tokens[2, 2], images[1, 4:, :4].ravel() + 1)  # bottom left
  with pytest.raises(ValueError, match="patches"):
    features.pixel_features(batches, patch_size=3)


def test_a_feature_pass_logs_its_progress_with_rate_and_eta(monkeypatch, caplog):
  import logging
  caplog.set_level(logging.INFO, logger="absl")
  monkeypatch.setattr(features, "PROGRESS_SECONDS", 0.0)  # a line after every batch
  encoder = vit.ViTEncoder(image_size=8, patch_size=4, width=16, depth=1, num_heads=2)
  images = np.zeros((8, 8, 8, 3), np.float32)
  params = encoder.init(jax.random.PRNGKey(1), images)["params"]
  batches = [{"image": images, "label": np.arange(8)} for _ in range(3)]
  features.extract_features(encoder, params, iter(batches), what="train images", total=24)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Encoded")]
  assert [line.split(" (")[0] for line in lines] == [
      "Encoded 8 of 24 train images", "Encoded 16 of 24 train images",
      "Encoded 24 of 24 train images", "Encoded 24 of 24 train images"]
  assert all("/s, ETA 0:00:" in line for line in lines[:3]) and "ETA" not in lines[-1]
  caplog.clear()
  features.extract_features(encoder, params, iter(batches))  # no total: silent
  assert not any(r.getMessage().startswith("Encoded") for r in caplog.records)


def test_representation_stats_of_spread_collapsed_and_hand_computed_features():
  spread = features.representation_stats(np.eye(4) * 3.0)  # equal singular values
  assert spread["effective_rank"] == pytest.approx(4.0)
  assert spread["mean_cosine"] == pytest.approx(0.0)
  collapsed = features.representation_stats(np.tile([[1.0, 2.0, 3.0]], (5, 1)))
  assert collapsed["effective_rank"] == pytest.approx(1.0, abs=1e-6)
  assert collapsed["mean_cosine"] == pytest.approx(1.0)
  # rows (1, 0), (1, 1), (0, 1): cosines 1/√2, 0, 1/√2; singular values √3 and 1
  hand = features.representation_stats(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
  assert hand["mean_cosine"] == pytest.approx(np.sqrt(2) / 3)
  p = np.array([np.sqrt(3), 1.0]) / (np.sqrt(3) + 1.0)
  assert hand["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
