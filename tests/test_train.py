"""The trainer end to end: checkpoints, TensorBoard events, exact resume, config errors."""
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, checkpoint_steps, event_tags, scalar_series, tiny_mae_config
from mim_jax import masking, methods, optim, pretrain, sharding, train
from mim_jax.evaluation import pretrained
from mim_jax.methods import mae


def test_pretraining_writes_checkpoints_and_events_and_restores(tmp_path):
  config = tiny_mae_config(num_train_steps=6, keep_checkpoints=2)
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == 6
  assert checkpoint_steps(tmp_path) == [4, 6]  # every 2 steps, last 2 kept
  tags = event_tags(str(tmp_path))
  for tag in ("loss", "lr", "grad_norm", "images_per_sec", "step_time", "steps_per_sec",
              "mae_loss"):
    assert tag in tags, tags
  # one measurement each, from step 2 on (step 1 compiles and is left out)
  times = scalar_series(str(tmp_path), "step_time", with_steps=True)
  rates = scalar_series(str(tmp_path), "steps_per_sec", with_steps=True)
  assert [s for s, _ in times] == [s for s, _ in rates] == [2, 3, 4, 5, 6]
  np.testing.assert_allclose([t * r for (_, t), (_, r) in zip(times, rates)], 1.0, rtol=1e-6)
  assert any(t.startswith("reconstruction") for t in tags), tags
  restored_config, restored = pretrained.restore_state(str(tmp_path))
  assert restored_config.model.width == config.model.width
  assert int(restored.step) == 6
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               state.params, restored.params)
  _, at_step_4 = pretrained.restore_state(str(tmp_path), step=4)
  assert int(at_step_4.step) == 4


def test_progress_leaves_out_the_compiling_step_and_paused_time(monkeypatch, caplog):
  clock = [100.0]
  monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
  caplog.set_level(logging.INFO, logger="absl")
  progress = train.Progress(total_steps=100, batch_size=64)
  assert progress.measure(10) == {}  # not started: step 10 was the first, compiling one
  progress.start(10)
  clock[0] += 8.0  # steps 11..14, 2 s each
  with progress.paused(jnp.zeros(())):
    clock[0] += 30.0  # an evaluation
  clock[0] += 12.0  # steps 15..20
  assert progress.measure(20) == {"step_time": 2.0, "steps_per_sec": 0.5,
                                  "images_per_sec": 32.0}
  assert caplog.records[-1].getMessage() == (
      "Step 20/100 (20.0%): 0.5 steps/s, 2 s/step, ETA 0:02:40")
  clock[0] += 3.0
  assert progress.measure(21)["step_time"] == 3.0  # the pause is not carried over
  assert train.format_duration(3725.4) == "1:02:05"


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
  config = tiny_mae_config(num_train_steps=6, checkpoint_every_steps=3)
  full = pretrain.run(config, str(tmp_path / "full"))
  stopped = pretrain.run(config, str(tmp_path / "resumed"), stop_after_step=3)
  assert int(stopped.step) == 3
  assert checkpoint_steps(tmp_path / "resumed") == [3]
  resumed = pretrain.run(config, str(tmp_path / "resumed"))
  assert int(resumed.step) == 6
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               (full.params, full.opt_state), (resumed.params, resumed.opt_state))
  # and the stop changed something: params at step 3 differ from those at step 6
  assert not np.array_equal(np.asarray(stopped.params["encoder"]["norm"]["scale"]),
                            np.asarray(resumed.params["encoder"]["norm"]["scale"]))


def test_stop_after_step_zero_saves_the_initial_state_and_the_rerun_continues(tmp_path):
  config = tiny_mae_config(num_train_steps=4, image_summary_every_steps=0)
  full = pretrain.run(config, str(tmp_path / "full"))
  initial = pretrain.run(config, str(tmp_path / "resumed"), stop_after_step=0)
  assert int(initial.step) == 0
  assert checkpoint_steps(tmp_path / "resumed") == [0]
  _, saved = pretrained.restore_state(str(tmp_path / "resumed"), step=0)
  assert int(saved.step) == 0
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               (initial.params, initial.opt_state), (saved.params, saved.opt_state))
  resumed = pretrain.run(config, str(tmp_path / "resumed"))
  assert checkpoint_steps(tmp_path / "resumed") == [0, 2, 4]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               (full.params, full.opt_state), (resumed.params, resumed.opt_state))
  assert not np.array_equal(np.asarray(saved.params["encoder"]["norm"]["scale"]),
                            np.asarray(resumed.params["encoder"]["norm"]["scale"]))


@pytest.mark.parametrize("overrides,message", [
    (dict(batch_size=12), "divisible"),
    (dict(grad_accum_steps=3), "grad_accum_steps"),
    (dict(batch_size=32, grad_accum_steps=8), "micro-batch"),
])
def test_bad_batch_config_fails_before_compiling(tmp_path, overrides, message):
  config = tiny_mae_config(**overrides)
  with pytest.raises(ValueError, match=message):
    pretrain.run(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_bad_model_config_messages(tmp_path):
  # a method validates its own fields when it is built, before the trainer runs
  config = tiny_mae_config()
  config.model.patch_size = 5
  with pytest.raises(ValueError, match="patch_size"):
    methods.create(config)
  config = tiny_mae_config()
  config.method.mask_ratio = 1.0
  with pytest.raises(ValueError, match="mask_ratio"):
    methods.create(config)
  config = tiny_mae_config()
  config.method.name = "beit"
  with pytest.raises(ValueError, match="method.name"):
    methods.create(config)
  config = tiny_mae_config()
  config.model.num_heads = 3
  with pytest.raises(ValueError, match="num_heads"):
    train.validate_config(config, 8, 1)


def test_main_runs_the_quickstart_config_from_the_command_line(tmp_path):
  cmd = [sys.executable, "-m", "mim_jax.main", "--config=configs/quickstart.py",
         f"--workdir={tmp_path}", "--config.num_train_steps=2", "--config.model.depth=1",
         "--config.batch_size=8", "--config.data.synthetic_train_size=64",
         "--config.checkpoint_every_steps=2", "--config.log_every_steps=1"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert checkpoint_steps(tmp_path) == [2]
  assert "loss" in event_tags(str(tmp_path))


class MAEWithTargets(mae.MAE):
  """MAE plus an EMA copy of the encoder (momentum 0.5) whose output enters the loss
  through a term that depends on the target params only."""

  def target_source(self, params):
    return params["encoder"]

  def target_momentum(self, step, total_steps):
    return jnp.float32(0.5)

  def loss(self, params, target_params, batch, masks, rng, step):
    loss, metrics = super().loss(params, target_params, batch, masks, rng, step)
    target_out = self.encoder.apply({"params": target_params}, batch["image"])
    return loss + jnp.mean(target_out**2), metrics


def test_target_params_follow_the_ema_and_get_no_gradient():
  config = tiny_mae_config()
  mesh = sharding.create_mesh(config, jax.devices()[:1])
  lr_fn = optim.lr_schedule(1e-2, total_steps=10, warmup_steps=0)
  tx = optim.create_optimizer(config, lr_fn)
  images = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
  batch = {"image": images}
  with_targets, plain = MAEWithTargets(config), mae.MAE(config)
  state0, _ = train.create_train_state(with_targets, tx, config, mesh, batch)
  assert jax.tree.structure(state0.target_params) == jax.tree.structure(
      state0.params["encoder"])
  step = jax.jit(train.make_train_step(with_targets, tx, lr_fn, config, 10, mesh))
  plain_step = jax.jit(train.make_train_step(plain, tx, lr_fn, config, 10, mesh))
  state1, metrics = step(state0, batch)
  assert float(metrics["target_momentum"]) == 0.5
  state2, _ = step(state1, batch)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  # step 0: m·init + (1 − m)·init; step 1: m·target_1 + (1 − m)·online_1, before the loss
  jax.tree.map(close, state1.target_params, state0.params["encoder"])
  jax.tree.map(close, state2.target_params,
               jax.tree.map(lambda t, s: 0.5 * t + 0.5 * s, state1.target_params,
                            state1.params["encoder"]))
  # the target-only loss term changes nothing in the online update: no gradient flows
  plain_state1, plain_metrics = plain_step(state0.replace(target_params={}), batch)
  jax.tree.map(close, state1.params, plain_state1.params)
  assert float(metrics["loss"]) > float(plain_metrics["loss"])


class TwoViewMAE(mae.MAE):
  """Independent MAE on each of two views: exercises [B, V, H, W, C] batches."""
  num_views = 2

  def init(self, rng, batch):
    return mae.MAE(self.config).init(rng, {"image": batch["image"][:, 0]})

  def make_masks(self, rng, batch):
    b, v = batch["image"].shape[:2]
    mask = masking.random_masking(rng, b * v, self.num_patches, self.mask_ratio)
    return {"mask": mask.reshape(b, v, -1)}

  def loss(self, params, target_params, batch, masks, rng, step):
    b, v, h, w, c = batch["image"].shape
    flat = {"image": batch["image"].reshape(b * v, h, w, c)}
    return super().loss(params, target_params, flat, {"mask": masks["mask"].reshape(b * v, -1)},
                        rng, step)

  def summaries(self, params, batch, masks):
    return {}


def test_trainer_feeds_several_views_per_image(tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "two_view_mae", TwoViewMAE)
  config = tiny_mae_config(num_train_steps=2)
  config.method.name = "two_view_mae"
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == 2
  assert checkpoint_steps(tmp_path) == [2]


def test_mae_learns_on_real_cifar_images(tmp_path, cifar_npz):
  """150 steps on CIFAR-10 images: the hidden-patch loss falls well below its start and
  below the loss of predicting each patch's mean, (p²·3 − 1)/(p²·3) = 0.979 for
  standardised targets."""
  config = tiny_mae_config(num_train_steps=150, warmup_steps=10, log_every_steps=10,
                           checkpoint_every_steps=1000, image_summary_every_steps=0)
  config.data.update(source="npz", path=str(cifar_npz), image_size=32, eval_split="test")
  config.model.update(patch_size=4, width=64, depth=2, num_heads=4, decoder_width=32)
  config.batch_size = 64
  config.optimizer.base_lr = 1e-3
  pretrain.run(config, str(tmp_path))
  losses = scalar_series(str(tmp_path), "loss")
  assert len(losses) == 15
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
  assert np.mean(losses[-3:]) < 0.95, losses
