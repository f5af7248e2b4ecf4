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
