"""mim_jax/models/vit.py: patches, sin-cos and relative position embeddings, the encoder's
visible-token and mask-token paths, and its speed options (scan, remat, the fused
attention): the same functions as the default path."""
import functools

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


def test_relative_position_index_follows_the_beit_table_layout():
  gh, gw = 3, 4
  index = vit.relative_position_index((gh, gw))
  size = (2 * gh - 1) * (2 * gw - 1) + 3
  assert index.shape == (13, 13)
  for i in range(12):
    for j in range(12):
      (ri, ci), (rj, cj) = divmod(i, gw), divmod(j, gw)
      assert index[1 + i, 1 + j] == (ri - rj + gh - 1) * (2 * gw - 1) + (ci - cj + gw - 1)
  assert (index[0, 1:] == size - 3).all() and (index[1:, 0] == size - 2).all()  # cls→, →cls
  assert index[0, 0] == size - 1
  assert set(index[1:, 1:].ravel()) == set(range(size - 3))  # every offset has an entry


def test_attention_adds_the_bias_to_the_logits():
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  bias = np.random.default_rng(1).normal(size=(1, 2, 5, 5)).astype(np.float32)
  attn = vit.Attention(num_heads=2)
  params = attn.init(jax.random.PRNGKey(0), x)["params"]
  out = attn.apply({"params": params}, x, bias=bias)
  qkv = (x @ np.asarray(params["qkv"]["kernel"]) + np.asarray(params["qkv"]["bias"]))
  q, k, v = qkv.reshape(2, 5, 3, 2, 4).transpose(2, 0, 3, 1, 4)  # each [B, H, N, Dh]
  logits = q @ k.transpose(0, 1, 3, 2) / 2.0 + bias  # sqrt(Dh) = 2
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 5, 8)
  expected = heads @ np.asarray(params["proj"]["kernel"]) + np.asarray(params["proj"]["bias"])
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_shared_relative_position_bias_is_the_only_position_signal():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  enc = _encoder(pos_embedding="shared_rel_bias")
  params = enc.init(jax.random.PRNGKey(1), x)
  table = params["params"]["rel_pos_bias"]["relative_position_bias_table"]
  assert table.shape == (7 * 7 + 3, 4) and not np.asarray(table).any()  # zeros, as BEiT
  assert "pos_embed" not in params["params"]
  # swap patch 0 and patch 5 of the image: with a zero table the outputs just swap
  patches = vit.patchify(x, 4)
  swapped = vit.unpatchify(patches[:, jnp.array([5, 1, 2, 3, 4, 0] + list(range(6, 16)))], 4,
                           (4, 4))
  order = jnp.array([0, 6, 2, 3, 4, 5, 1] + list(range(7, 17)))  # cls first
  np.testing.assert_allclose(enc.apply(params, swapped), enc.apply(params, x)[:, order],
                             atol=1e-5)
  rand_table = jax.random.normal(jax.random.PRNGKey(2), table.shape)
  params = {"params": {**params["params"], "rel_pos_bias": {
      "relative_position_bias_table": rand_table}}}
  assert np.abs(enc.apply(params, swapped) - enc.apply(params, x)[:, order]).max() > 1e-2
  # visible subsets see the bias entries of their own positions
  full = np.asarray(enc.apply(params, method=lambda m: m.attention_bias()))  # [1, H, 17, 17]
  visible = jnp.array([[0, 5, 10, 15], [3, 4, 7, 12]])
  sub = np.asarray(enc.apply(params, visible, method=lambda m, v: m.attention_bias(v)))
  for b in range(2):
    seq = np.concatenate([[0], np.asarray(visible[b]) + 1])
    np.testing.assert_array_equal(sub[b], full[0][:, seq][:, :, seq])
  with pytest.raises(ValueError, match="pos_embedding"):
    _encoder(pos_embedding="rope").init(jax.random.PRNGKey(1), x)


# --- speed options: scan, remat, the fused attention --------------------------------------

KW = dict(image_size=16, patch_size=4, width=32, depth=2, num_heads=4)


IMAGES = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))


VISIBLE = jnp.array([[0, 3, 5, 9, 12, 15], [1, 2, 4, 8, 10, 14]])


def _encoder_outputs(encoder, params):
  """(output, block-1 output, sown intermediates) of `encoder` on IMAGES at VISIBLE."""
  apply = lambda **kw: encoder.apply({"params": params}, IMAGES, VISIBLE, **kw)
  return apply(), apply(block=1), apply(mutable=["intermediates"])[1]["intermediates"]


def test_scanned_encoder_equals_unrolled_with_restacked_params():
  unrolled = vit.ViTEncoder(**KW, pos_embedding="shared_rel_bias", layer_scale_init=0.1)
  scanned = unrolled.clone(scan_layers=True)
  params = unrolled.init(jax.random.PRNGKey(1), IMAGES, VISIBLE)["params"]
  # a non-zero relative position bias table, so that the bias matters
  params["rel_pos_bias"]["relative_position_bias_table"] = jax.random.normal(
      jax.random.PRNGKey(2), params["rel_pos_bias"]["relative_position_bias_table"].shape)
  stacked = vit.stack_block_params(params, 2)
  assert stacked["blocks"]["layers"]["attn"]["qkv"]["kernel"].shape == (2, 32, 96)
  assert jax.tree.structure(stacked) == jax.tree.structure(
      scanned.init(jax.random.PRNGKey(1), IMAGES, VISIBLE)["params"])
  jax.tree.map(np.testing.assert_array_equal, vit.unstack_block_params(stacked, 2), params)
  out, out_1, sown = jax.jit(functools.partial(_encoder_outputs, unrolled))(params)
  scan_out, scan_out_1, scan_sown = jax.jit(functools.partial(_encoder_outputs, scanned))(
      stacked)
  np.testing.assert_allclose(scan_out, out, atol=2e-5)
  np.testing.assert_allclose(scan_out_1, out_1, atol=2e-5)
  assert not np.allclose(out_1, out, atol=1e-2)
  weights = scan_sown["blocks"]["layers"]["attn"]["attention_weights"][0]
  assert weights.shape == (2, 2, 4, 7, 7)  # [depth, B, H, 1 + K, 1 + K]
  for i in range(2):
    np.testing.assert_allclose(weights[i], sown[f"blocks_{i}"]["attn"]["attention_weights"][0],
                               atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_dot_product_attention_equals_explicit_softmax_weights(with_bias):
  attention = vit.Attention(num_heads=4)
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 7, 32))
  bias = jax.random.normal(jax.random.PRNGKey(6), (2, 4, 7, 7)) if with_bias else None
  params = attention.init(jax.random.PRNGKey(7), x, bias=bias)
  fused = attention.apply(params, x, bias=bias)  # jax.nn.dot_product_attention
  explicit, sown = attention.apply(params, x, bias=bias, mutable=["intermediates"])
  np.testing.assert_allclose(fused, explicit, atol=1e-5)
  qkv = params["params"]["qkv"]
  q, k, _ = np.moveaxis((np.asarray(x) @ qkv["kernel"] + qkv["bias"]).reshape(2, 7, 3, 4, 8), 2, 0)
  logits = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(8) + (0 if bias is None else bias)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(sown["intermediates"]["attention_weights"][0], expected, atol=1e-5)


def test_compute_dtype_logits_round_the_logits_and_keep_a_float32_softmax():
  """'xla_compute_logits': in float32 the 'xla' attention to rounding; in bfloat16 the
  logits are rounded to bfloat16 (and differ from 'xla', whose logits stay float32) while
  the softmax still sums to 1 in float32 before its bfloat16 output."""
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 7, 32))
  params = vit.Attention(num_heads=4).init(jax.random.PRNGKey(7), x)
  for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)):
    out = {impl: vit.Attention(num_heads=4, dtype=dtype, implementation=impl).apply(
        params, x, mutable=["intermediates"]) for impl in ("xla", "xla_compute_logits")}
    (a, _), (b, sown_b) = out["xla"], out["xla_compute_logits"]
    np.testing.assert_allclose(np.float32(b), np.float32(a), atol=tol)
    weights = np.float32(sown_b["intermediates"]["attention_weights"][0])
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=tol)
  # logits near 30, where bfloat16's step is 0.125: q scaled to bf16, q·kᵀ rounded to bf16
  q = (jnp.arange(8.0) / 8).reshape(1, 1, 1, 8).astype(jnp.bfloat16)
  k = jnp.linspace(0.0, 30.0, 5 * 8).reshape(1, 5, 1, 8).astype(jnp.bfloat16)
  bf16 = lambda a: np.float32(jnp.asarray(a, jnp.bfloat16))
  logits = np.einsum("nhd,mhd->hnm", np.float32(q[0]), np.float32(k[0]))[0, 0] / np.sqrt(8)
  rounded = bf16(np.einsum("nhd,mhd->hnm", bf16(np.float32(q[0]) / np.sqrt(8)),
                           np.float32(k[0])))[0, 0]
  softmax = lambda l: np.exp(l - l.max()) / np.exp(l - l.max()).sum()
  low = np.float32(vit.attention_weights(q, k, float32_logits=False))[0, 0, 0]
  high = np.float32(vit.attention_weights(q, k))[0, 0, 0]
  np.testing.assert_allclose(low, softmax(rounded), rtol=4e-3)  # bf16 output rounding
  np.testing.assert_allclose(high, softmax(logits), rtol=4e-3)
  assert np.abs(low / softmax(logits) - 1).max() > 0.02  # the rounded logits show


def test_remat_policies_and_scan_give_identical_gradients():
  params = vit.ViTEncoder(**KW).init(jax.random.PRNGKey(10), IMAGES, VISIBLE)["params"]

  def grads(p, drop_path_rate=0.1, **options):
    encoder = vit.ViTEncoder(**KW, drop_path_rate=drop_path_rate, **options)
    loss = lambda p: jnp.sum(encoder.apply({"params": p}, IMAGES, VISIBLE, deterministic=False,
                                           rngs={"dropout": jax.random.PRNGKey(11)})**2)
    return jax.grad(loss)(p)

  @jax.jit
  def all_grads(p):
    unrolled = {policy: grads(p, remat=policy) for policy in vit.REMAT_POLICIES}
    # the scanned stack draws other drop-path masks: compared without stochastic depth
    scanned = grads(vit.stack_block_params(p, 2), 0.0, remat="dots_saveable", scan_layers=True)
    return unrolled, vit.unstack_block_params(scanned, 2), grads(p, 0.0)

  unrolled, scanned, reference = all_grads(params)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for policy in set(vit.REMAT_POLICIES) - {"none"}:
    jax.tree.map(close, unrolled[policy], unrolled["none"])
  jax.tree.map(close, scanned, reference)


def test_fused_qkv_is_the_dense_qkv_projection_split_into_heads():
  """vit.FusedQKV keeps timm's fused Linear: nn.Dense's parameters and initialisation, and
  its output reshaped to [B, N, 3, H, Dh] and split into q, k, v [B, N, H, Dh], with the
  same gradients for the parameters and the input."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(96, kernel_init=vit.xavier_uniform, name="qkv")(x)

  class Fused(nn.Module):
    @nn.compact
    def __call__(self, x):
      return vit.FusedQKV(4, name="qkv")(x)

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 32))
  params = Dense().init(jax.random.PRNGKey(1), x)
  fused_params = Fused().init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, fused_params, params)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        params)  # a non-zero bias too
  want = Dense().apply(params, x).reshape(2, 5, 3, 4, 8)
  got = Fused().apply(params, x)
  assert len(got) == 3
  for i in range(3):
    np.testing.assert_allclose(got[i], want[:, :, i], rtol=1e-5, atol=1e-5)
  # its own VJP (nn.Dense's on the concatenated cotangents): the same gradients for the
  # kernel, the bias and the input, each of q, k and v weighted differently
  weights = jax.random.normal(jax.random.PRNGKey(3), want.shape)
  grad = lambda f: jax.grad(lambda p, x: jnp.sum(f(p, x) * weights), argnums=(0, 1))(params, x)
  got, want = (grad(lambda p, x: jnp.stack(Fused().apply(p, x), axis=2)),
               grad(lambda p, x: Dense().apply(p, x).reshape(2, 5, 3, 4, 8)))
  assert float(jnp.abs(got[1]).max()) > 0.1  # the input gradient is not trivially zero
  assert float(jnp.abs(got[0]["params"]["qkv"]["bias"]).min()) > 0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5), got, want)
