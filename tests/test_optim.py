import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax import defaults, optim


def test_lr_scaling_rules():
  assert optim.scaled_lr(1.5e-4, "linear_256", 4096) == pytest.approx(2.4e-3)
  assert optim.scaled_lr(1e-4, "linear_512", 2048) == pytest.approx(4e-4)
  assert optim.scaled_lr(1.5e-3, "absolute", 2048) == pytest.approx(1.5e-3)
  with pytest.raises(ValueError, match="lr_scaling"):
    optim.scaled_lr(1.0, "sqrt", 256)


def test_warmup_cosine_schedule_values():
  lr = optim.lr_schedule(1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
  assert float(lr(110)) == pytest.approx(0.1)
  assert float(lr(500)) == pytest.approx(0.1)


def test_steps_from_epochs():
  assert optim.steps_from_epochs(-1, 2.5, 100) == 250
  assert optim.steps_from_epochs(7, 2.5, 100) == 7


def test_cosine_momentum_schedule():
  assert float(optim.cosine_momentum(0, 100, 0.99)) == pytest.approx(0.99)
  assert float(optim.cosine_momentum(50, 100, 0.99)) == pytest.approx(0.995)
  assert float(optim.cosine_momentum(100, 100, 0.99)) == pytest.approx(1.0)


def test_default_weight_decay_mask():
  params = {"encoder": {"cls_token": jnp.zeros((1, 1, 4)), "patch_embed": {
      "kernel": jnp.zeros((8, 4)), "bias": jnp.zeros(4)}, "norm": {"scale": jnp.ones(4),
      "bias": jnp.zeros(4)}, "blocks_0": {"gamma_1": jnp.ones(4)}},
      "decoder": {"mask_token": jnp.zeros((1, 1, 4)), "decoder_pred": {"kernel": jnp.ones((4, 2))}}}
  mask = optim.decay_mask(params, defaults.NO_DECAY_PATTERNS)
  assert mask["encoder"]["patch_embed"] == {"kernel": True, "bias": False}
  assert mask["decoder"]["decoder_pred"]["kernel"] is True
  assert not mask["encoder"]["cls_token"] and not mask["decoder"]["mask_token"]
  assert mask["encoder"]["norm"] == {"scale": False, "bias": False}
  assert mask["encoder"]["blocks_0"]["gamma_1"] is False


def test_adamw_applies_decay_only_where_masked():
  config = defaults.base_config()
  config.optimizer.update(weight_decay=0.5, grad_clip=0.0)
  tx = optim.create_optimizer(config, lambda step: 0.1)
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  grads = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)  # decoupled decay
  np.testing.assert_allclose(new["dense"]["bias"], 1.0)


def test_gradient_clipping_by_global_norm():
  config = defaults.base_config()
  config.optimizer.update(weight_decay=0.0, grad_clip=1.0, b1=0.9)
  tx = optim.create_optimizer(config, lambda step: 1.0)
  params = {"w": jnp.zeros(2)}
  _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  mu = optax.tree_utils.tree_get(state, "mu")  # Adam's first moment = (1 − b1)·clipped grad
  np.testing.assert_allclose(mu["w"], 0.1 * np.array([0.6, 0.8]), rtol=1e-5)


def test_multistep_schedule_values():
  lr = optim.lr_schedule(1.0, total_steps=100, warmup_steps=10, schedule="multistep",
                         decay_steps=(70, 90), decay_rate=0.1)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0) and float(lr(69)) == pytest.approx(1.0)
  assert float(lr(70)) == pytest.approx(0.1) and float(lr(89)) == pytest.approx(0.1)
  assert float(lr(90)) == pytest.approx(0.01) and float(lr(500)) == pytest.approx(0.01)
  with pytest.raises(ValueError, match="warmup"):
    optim.lr_schedule(1.0, 100, 10, schedule="multistep", decay_steps=(5,))
  with pytest.raises(ValueError, match="schedule"):
    optim.lr_schedule(1.0, 100, 10, schedule="linear")


def test_schedule_from_config_milestones_in_epochs_or_steps():
  config = defaults.base_config()
  assert float(optim.lr_schedule_from_config(config, 1.0, 110, 10, 5)(60)) == pytest.approx(
      0.5)  # default: the cosine
  config.optimizer.update(schedule="multistep", decay_epochs=(7.0,), decay_rate=0.5)
  lr = optim.lr_schedule_from_config(config, 2.0, 100, 10, steps_per_epoch=10)
  assert float(lr(69)) == pytest.approx(2.0) and float(lr(70)) == pytest.approx(1.0)
  config.optimizer.decay_steps = (30,)
  lr = optim.lr_schedule_from_config(config, 2.0, 100, 10, steps_per_epoch=10)
  assert float(lr(29)) == pytest.approx(2.0) and float(lr(30)) == pytest.approx(1.0)
