import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.models import vit


def test_patchify_order_and_roundtrip():
  # 4x4 image, 2 channels, patch 2: patch (0, 1) covers rows 0-1, cols 2-3.
  img = np.arange(4 * 4 * 2, dtype=np.float32).reshape(1, 4, 4, 2)
  patches = np.asarray(vit.patchify(jnp.asarray(img), 2))
  assert patches.shape == (1, 4, 8)
  expected = img[0, 0:2, 2:4, :].reshape(-1)  # (p, p, C) flattening
  np.testing.assert_array_equal(patches[0, 1], expected)
  np.testing.assert_array_equal(vit.unpatchify(patches, 2, (2, 2)), img)


def test_sincos_2d_matches_the_mae_formula_by_hand():
  d, gh, gw = 8, 2, 3
  emb = vit.sincos_2d(d, (gh, gw))
  assert emb.shape == (6, 8)
  # token 4 = row 1, col 1; first D/2 channels encode the column with omega = [1, 1e-2].
  omega = np.array([1.0, 1e-2])
  row, col = 1, 1
  expected = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                             np.sin(row * omega), np.cos(row * omega)])
  np.testing.assert_allclose(emb[4], expected, atol=1e-6)
  # token 2 = row 0, col 2
  expected = np.concatenate([np.sin(2 * omega), np.cos(2 * omega), np.zeros(2), np.ones(2)])
  np.testing.assert_allclose(emb[2], expected, atol=1e-6)


def _encoder(**kw):
  args = dict(image_size=16, patch_size=4, width=32, depth=2, num_heads=4)
  args.update(kw)
  return vit.ViTEncoder(**args)


def test_encoder_shapes_visible_and_mask_token_paths():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 3))
  enc = _encoder()
  visible = jnp.tile(jnp.arange(5)[None], (3, 1))
  params = enc.init(jax.random.PRNGKey(1), x, visible)
  assert enc.apply(params, x, visible).shape == (3, 6, 32)
  assert enc.apply(params, x).shape == (3, 17, 32)
  enc_m = _encoder(use_mask_token=True)
  mask = jnp.zeros((3, 16)).at[:, :4].set(1.0)
  params_m = enc_m.init(jax.random.PRNGKey(1), x, token_mask=mask)
  assert "mask_token" in params_m["params"]
  out_all_hidden = enc_m.apply(params_m, x, token_mask=jnp.ones((3, 16)))
  out_other_image = enc_m.apply(params_m, -x, token_mask=jnp.ones((3, 16)))
  np.testing.assert_allclose(out_all_hidden, out_other_image, atol=1e-5)  # pixels unseen


def test_visible_subset_equals_encoding_the_gathered_tokens():
  """Selecting visible tokens happens after the position embedding (MAE)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  enc = _encoder(depth=1)
  params = enc.init(jax.random.PRNGKey(1), x)
  visible = jnp.array([[0, 5, 10, 15], [3, 4, 7, 12]])
  out = enc.apply(params, x, visible)

  def manual(mdl, images, idx):
    tokens = jnp.take_along_axis(mdl.embed(images), idx[..., None], axis=1)
    return mdl.transform(mdl.prepend_cls(tokens))

  np.testing.assert_allclose(out, enc.apply(params, x, visible, method=manual), atol=1e-6)
  # position embedding is fixed: permuting the visible order permutes the outputs
  out_perm = enc.apply(params, x, visible[:, ::-1])
  np.testing.assert_allclose(out_perm[:, 1:], out[:, 1:][:, ::-1], atol=1e-5)
  np.testing.assert_allclose(out_perm[:, 0], out[:, 0], atol=1e-5)


def test_remat_and_bfloat16_compute_keep_float32_params():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  enc, enc_remat = _encoder(), _encoder(remat=True)
  params = enc.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(enc.apply(params, x), enc_remat.apply(params, x), atol=1e-6)
  grad = jax.grad(lambda p, m: m.apply(p, x).sum())
  g1, g2 = grad(params, enc), grad(params, enc_remat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g1, g2)
  enc_bf16 = _encoder(dtype=jnp.bfloat16)
  params_bf16 = enc_bf16.init(jax.random.PRNGKey(1), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params_bf16))
  out = enc_bf16.apply(params, x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), enc.apply(params, x), atol=0.1)


def test_drop_path_needs_rng_only_in_training_and_drops_whole_samples():
  blk = vit.Block(num_heads=2, drop_path=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 8))
  params = blk.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(blk.apply(params, x), blk.apply(params, x, True))
  y = blk.apply(params, x, False, rngs={"dropout": jax.random.PRNGKey(2)})
  # with rate 0.5 both residual branches are dropped for ~25% of samples: output == input
  untouched = np.all(np.isclose(np.asarray(y), np.asarray(x)), axis=(1, 2))
  assert 4 <= untouched.sum() <= 30


def test_image_size_mismatch_is_a_clear_error():
  enc = _encoder()
  with pytest.raises(ValueError, match="16px"):
    enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
