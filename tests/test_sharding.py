"""One train step on 8 fake devices equals the same step on one device."""
import jax
import numpy as np
import pytest

from conftest import assert_sharded_equals_one_device, random_images, tiny_mae_config
from mim_jax import methods, optim, sharding
from mim_jax.training import state as train_state, train_step


@pytest.mark.parametrize("mode", ["data_parallel", "fsdp"])
def test_sharded_step_equals_single_device_step(mode):
  config = tiny_mae_config()
  config.sharding.mode = mode
  config.optimizer.eps = 1e-6  # the exactly-zero key-bias gradient: see the helper
  (state8, _, _), _ = assert_sharded_equals_one_device(config, random_images(config))
  specs = {leaf.sharding.spec for leaf in jax.tree.leaves(state8.params)}
  if mode == "fsdp":
    assert any("fsdp" in tuple(s) for s in specs), specs
    kernel = state8.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]  # [32, 128]
    assert kernel.addressable_shards[0].data.shape == (32, 16)
  else:
    assert all(tuple(s) == () for s in specs), specs


def test_gradient_accumulation_matches_one_big_batch_without_masking_noise():
  """With accumulation the step averages micro-batch gradients: mask ratio and loss are
  per-example, so 2 micro-batches of 8 equal one batch of 16 when the masks agree."""
  config = tiny_mae_config()
  images = random_images(config)
  mesh = sharding.create_mesh(config, jax.devices())
  method = methods.create(config)
  lr_fn = optim.lr_schedule(1e-3, total_steps=10, warmup_steps=1)
  tx = optim.create_optimizer(config, lr_fn)
  state, _ = train_state.create_train_state(method, tx, config, mesh)
  fixed_mask = method.make_masks(jax.random.PRNGKey(0), {"image": images})["mask"]
  index = {"image": np.arange(16, dtype=np.float32)}

  class FixedMask(type(method)):
    def make_masks(self, rng, batch):  # look up each example's mask by its index
      return {"mask": fixed_mask[batch["index"].astype(np.int32)]}

  fixed = FixedMask(config)
  batch = {"image": images, "index": index["image"]}
  grads = {}
  for accum in (1, 2):
    config.grad_accum_steps = accum
    step = jax.jit(train_step.make_train_step(fixed, tx, lr_fn, config, mesh))
    new_state, metrics = step(state, batch)
    grads[accum] = (float(metrics["loss"]), new_state.params)
  np.testing.assert_allclose(grads[1][0], grads[2][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads[1][1],
               grads[2][1])


def test_mesh_shapes_and_bad_modes():
  config = tiny_mae_config()
  assert dict(sharding.create_mesh(config).shape) == {"data": 8, "fsdp": 1}
  config.sharding.mode = "fsdp"
  assert dict(sharding.create_mesh(config).shape) == {"data": 1, "fsdp": 8}
  config.sharding.fsdp_size = 4
  assert dict(sharding.create_mesh(config).shape) == {"data": 2, "fsdp": 4}
  config.sharding.fsdp_size = 16  # a pod recipe's group on one 8-device host: all of them
  assert dict(sharding.create_mesh(config).shape) == {"data": 1, "fsdp": 8}
  config.sharding.fsdp_size = 3
  with pytest.raises(ValueError, match="fsdp_size"):
    sharding.create_mesh(config)
  config.sharding.mode = "tensor"
  with pytest.raises(ValueError, match="sharding.mode"):
    sharding.create_mesh(config)
