"""Speed options (config.model.dtype/remat/scan_layers/attention_impl, config.donate_state):
same functions as the default path, and a train step runs with each."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_mae_config

from mim_jax import methods, optim, sharding, train
from mim_jax.models import vit

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


def test_scanned_mae_loss_equals_unrolled_loss():
  config = tiny_mae_config()
  config.model.decoder_depth = 2
  scanned_config = tiny_mae_config()
  scanned_config.model.update(decoder_depth=2, scan_layers=True)
  method, scanned_method = methods.create(config), methods.create(scanned_config)
  batch = {"image": IMAGES}
  params = jax.jit(method.init)(jax.random.PRNGKey(3), batch)
  stacked = {"encoder": vit.stack_block_params(params["encoder"], 2),
             "decoder": vit.stack_block_params(params["decoder"], 2, "decoder_blocks")}
  assert jax.tree.structure(stacked) == jax.tree.structure(
      jax.eval_shape(scanned_method.init, jax.random.PRNGKey(3), batch))
  masks = method.make_masks(jax.random.PRNGKey(4), batch)
  loss_fn = lambda m, p: m.loss(p, {}, batch, masks, None, 0)[0]
  loss = jax.jit(functools.partial(loss_fn, method))(params)
  scanned_loss = jax.jit(functools.partial(loss_fn, scanned_method))(stacked)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)


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


def test_bfloat16_compute_keeps_float32_params_and_a_close_float32_loss():
  batch = {"image": IMAGES}
  bf16_config = tiny_mae_config()
  bf16_config.model.dtype = "bfloat16"
  f32, bf16 = methods.create(tiny_mae_config()), methods.create(bf16_config)
  params = jax.jit(bf16.init)(jax.random.PRNGKey(8), batch)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  masks = f32.make_masks(jax.random.PRNGKey(9), batch)

  @jax.jit
  def losses(p):
    loss_fn = lambda method: method.loss(p, {}, batch, masks, None, 0)[0]
    return loss_fn(bf16), loss_fn(f32), bf16.encode(p, IMAGES, masks["mask"])[0]

  loss, ref_loss, latents = losses(params)
  assert latents.dtype == jnp.bfloat16
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, ref_loss, rtol=3e-2)
  assert loss != ref_loss  # the compute really ran in bfloat16


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


def test_a_train_step_runs_with_every_option_and_donation_is_a_choice():
  config = tiny_mae_config(donate_state=False)
  config.model.update(dtype="bfloat16", remat="dots_saveable", scan_layers=True)
  train.validate_config(config, jax.device_count(), 1)
  mesh = sharding.create_mesh(config)
  method = methods.create(config)
  lr_fn = optim.lr_schedule(1e-3, 10, 0)
  tx = optim.create_optimizer(config, lr_fn)
  images = np.asarray(jax.random.normal(jax.random.PRNGKey(12), (16, 16, 16, 3)))
  state, shardings = train.create_train_state(method, tx, config, mesh, {"image": images[:1]})
  batch = sharding.global_batch({"image": images}, sharding.batch_sharding(mesh))

  def step(donate):
    donating = config.copy_and_resolve_references()
    donating.donate_state = donate
    return train.jit_train_step(method, tx, lr_fn, donating, 10, mesh, shardings)

  # donation shows in the lowered program as input/output buffer aliases
  assert "tf.aliasing_output" in step(True).lower(state, batch).as_text()
  assert "tf.aliasing_output" not in step(False).lower(state, batch).as_text()
  new_state, metrics = step(False)(state, batch)
  assert np.isfinite(float(metrics["loss"])) and metrics["loss"].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
  kernel = state.params["encoder"]["patch_embed"]["kernel"]  # not donated: still readable
  assert not kernel.is_deleted()
  assert not np.allclose(kernel, new_state.params["encoder"]["patch_embed"]["kernel"])


@pytest.mark.parametrize("field, value, message", [
    ("remat", "everything", "config.model.remat"),
    ("attention_impl", "flash", "config.model.attention_impl"),
    ("attention_impl", "cudnn", "needs a GPU"),
    ("dtype", "float64", "config.model.dtype"),
])
def test_bad_speed_options_name_the_field(field, value, message):
  config = tiny_mae_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    train.validate_config(config, jax.device_count(), 1)
