"""The trainer end to end: checkpoints, TensorBoard events, exact resume, config errors,
EMA targets, several views per image, non-finite steps, the speed options."""
import glob
import gzip
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (assert_trees_close, checkpoint_steps, event_tags, scalar_series,
                      tiny_mae_config)
from mim_jax import checkpoint, masking, methods, optim, pretrain, sharding
from mim_jax.training import config as train_config, progress as progress_lib
from mim_jax.training import state as train_state, train_step
from mim_jax.evaluation import pretrained
from mim_jax.methods import mae
from mim_jax.methods.base import TARGET_UPDATES, Method


def test_pretraining_writes_checkpoints_and_events_and_restores(tmp_path):
  config = tiny_mae_config(num_train_steps=6, keep_checkpoints=2, profile_steps=(2, 3))
  state = pretrain.run(config, str(tmp_path))
  # the profiler trace of steps 2-3: TensorBoard's xplane and Perfetto's JSON, in which
  # device 0 of the 8 ran the compiled train step twice
  (trace_dir,) = glob.glob(str(tmp_path / "plugins" / "profile" / "*"))
  assert glob.glob(os.path.join(trace_dir, "*.xplane.pb"))
  with gzip.open(os.path.join(trace_dir, "perfetto_trace.json.gz")) as f:
    names = [event.get("name", "") for event in json.load(f)["traceEvents"]]
  assert names.count("[0] CommonPjRtLoadedExecutable::Execute (jit_train_step)") == 2
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
  monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: clock[0])
  caplog.set_level(logging.INFO, logger="absl")
  progress = progress_lib.Progress(total_steps=100, batch_size=64)
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
  assert progress_lib.format_duration(3725.4) == "1:02:05"


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


def test_a_run_on_one_chosen_device_equals_the_run_on_all_eight(tmp_path):
  config = tiny_mae_config(num_train_steps=2, image_summary_every_steps=0)
  with pytest.raises(ValueError, match="at least one device"):
    pretrain.run(config, str(tmp_path / "none"), devices=[])
  assert not (tmp_path / "none").exists()
  everywhere = pretrain.run(config, str(tmp_path / "all"))
  one = pretrain.run(config, str(tmp_path / "one"), devices=jax.devices()[3:4])
  for leaf in jax.tree.leaves((one.params, one.opt_state)):
    assert leaf.sharding.device_set == {jax.devices()[3]}
  assert len(jax.tree.leaves(everywhere.params)[0].sharding.device_set) == 8
  # Two steps move each parameter by about 9.4e-6 (Adam's first steps: lr·sign(g)); the
  # runs differ by at most 5.7e-7, where a gradient is near zero and its sign is rounding.
  assert_trees_close(everywhere.params, one.params, atol=1e-6)


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
    train_config.validate(config, 8, 1)


class MAEWithTargets(mae.MAE):
  """MAE plus an EMA copy of the encoder (momentum 0.5) whose output enters the loss
  through a term that depends on the target params only."""

  def target_source(self, params):
    return params["encoder"]

  def target_momentum(self, step):
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
  state0, _ = train_state.create_train_state(with_targets, tx, config, mesh)
  assert jax.tree.structure(state0.target_params) == jax.tree.structure(
      state0.params["encoder"])
  step = jax.jit(train_step.make_train_step(with_targets, tx, lr_fn, config, mesh))
  plain_step = jax.jit(train_step.make_train_step(plain, tx, lr_fn, config, mesh))
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


class RunningMean(Method):
  """A one-parameter method that keeps, as a target param the optimizer never sees, a
  running mean of its batches' mean pixel (m = 0.9, as a BatchNorm's running statistics),
  updated by the loss through TARGET_UPDATES; `scale` multiplies the loss (inf: every
  step is non-finite)."""
  scale = 1.0

  def init(self, rng, batch):
    return {"w": jnp.ones(())}

  def init_targets(self, rng, batch, params):
    return {"running": {"mean": jnp.zeros(())}}

  def make_masks(self, rng, batch):
    return {}

  def loss(self, params, target_params, batch, masks, rng, step):
    running = 0.9 * target_params["running"]["mean"] + 0.1 * jnp.mean(batch["image"])
    loss = self.scale * params["w"] ** 2 * jnp.mean(batch["image"] ** 2)
    return loss, {TARGET_UPDATES: {"running": {"mean": running}}}


def test_loss_side_target_updates_average_over_micro_batches_and_skip_with_the_step():
  images = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
  images[1::2] += 1.0  # the two micro-batches (every second example) differ in mean
  expected = 0.1 * images.mean()  # 0.9·0 + 0.1·mean, averaged over micro-batches: linear
  for accum in (1, 2):
    config = tiny_mae_config(grad_accum_steps=accum)
    mesh = sharding.create_mesh(config, jax.devices()[:1])
    lr_fn = optim.lr_schedule(1e-3, total_steps=10, warmup_steps=0)
    tx = optim.create_optimizer(config, lr_fn)
    method = RunningMean(config)
    state, _ = train_state.create_train_state(method, tx, config, mesh)
    step = jax.jit(train_step.make_train_step(method, tx, lr_fn, config, mesh))
    state, metrics = step(state, {"image": images})
    assert TARGET_UPDATES not in metrics  # stored, not logged
    np.testing.assert_allclose(float(state.target_params["running"]["mean"]), expected,
                               rtol=1e-5)
  method.scale = np.inf  # a skipped step keeps the targets it had
  bad_step = jax.jit(train_step.make_train_step(method, tx, lr_fn, config, mesh))
  skipped, metrics = bad_step(state, {"image": images})
  assert int(metrics["skipped_steps"]) == 1
  assert float(skipped.target_params["running"]["mean"]) == float(
      state.target_params["running"]["mean"])


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


# --- speed options (model dtype, remat, scan, attention; donate_state) -------------------

def test_a_train_step_runs_with_every_option_and_donation_is_a_choice():
  config = tiny_mae_config(donate_state=False)
  config.model.update(dtype="bfloat16", remat="dots_saveable", scan_layers=True)
  train_config.validate(config, jax.device_count(), 1)
  mesh = sharding.create_mesh(config)
  method = methods.create(config)
  lr_fn = optim.lr_schedule(1e-3, 10, 0)
  tx = optim.create_optimizer(config, lr_fn)
  images = np.asarray(jax.random.normal(jax.random.PRNGKey(12), (16, 16, 16, 3)))
  state, shardings = train_state.create_train_state(method, tx, config, mesh)
  batch = sharding.global_batch({"image": images}, sharding.batch_sharding(mesh))

  def step(donate):
    donating = config.copy_and_resolve_references()
    donating.donate_state = donate
    return train_step.jit_train_step(method, tx, lr_fn, donating, mesh, shardings)

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
    ("dtype", "float16", "without loss scaling.*use 'bfloat16'"),
])
def test_bad_speed_options_name_the_field(field, value, message):
  config = tiny_mae_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    train_config.validate(config, jax.device_count(), 1)


# --- non-finite steps --------------------------------------------------------------------

class NaNAtSteps(mae.MAE):
  """MAE whose loss is NaN at the steps listed in config.method.nan_steps."""

  def loss(self, params, target_params, batch, masks, rng, step):
    loss, metrics = super().loss(params, target_params, batch, masks, rng, step)
    bad = jnp.isin(step, jnp.asarray(self.config.method.nan_steps))
    return jnp.where(bad, jnp.nan, loss), metrics


def test_a_non_finite_step_is_skipped_and_counted():
  config = tiny_mae_config()
  config.method.nan_steps = (1,)
  method = NaNAtSteps(config)
  mesh = sharding.create_mesh(config, jax.devices()[:1])
  lr_fn = optim.lr_schedule(1e-3, total_steps=10, warmup_steps=0)
  tx = optim.create_optimizer(config, lr_fn)
  images = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
  state, _ = train_state.create_train_state(method, tx, config, mesh)
  step = jax.jit(train_step.make_train_step(method, tx, lr_fn, config, mesh))
  state1, _ = step(state, {"image": images})
  state2, metrics2 = step(state1, {"image": images})  # step index 1: NaN
  state3, metrics3 = step(state2, {"image": images})
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(same, (state1.params, state1.opt_state), (state2.params, state2.opt_state))
  assert int(state2.step) == 2
  assert (int(metrics2["skipped_steps"]), int(metrics2["nonfinite_streak"])) == (1, 1)
  assert (int(metrics3["skipped_steps"]), int(metrics3["nonfinite_streak"])) == (1, 0)
  assert np.isfinite(float(metrics3["loss"]))
  assert not np.array_equal(np.asarray(state3.params["encoder"]["norm"]["scale"]),
                            np.asarray(state2.params["encoder"]["norm"]["scale"]))


def test_too_many_non_finite_steps_stop_the_run_naming_the_checkpoint_before_them(
    tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "nan_mae", NaNAtSteps)
  # Logged every 100 steps: the streak is read at every step all the same (one step late,
  # while the next runs), so the run stops once it reaches 3, not at a log step.
  config = tiny_mae_config(num_train_steps=8, checkpoint_every_steps=2, max_nonfinite_steps=3,
                           image_summary_every_steps=0, log_every_steps=100)
  config.method.name = "nan_mae"
  config.method.nan_steps = (2, 3, 4, 5)  # 0-based step indices: train steps 3..6
  with pytest.raises(FloatingPointError, match=re.escape(
      "3 consecutive steps (3..5) had a non-finite loss or gradient and were skipped "
      "(config.max_nonfinite_steps=3). The newest checkpoint from before step 3 is step 2 in "
      f"{tmp_path / 'checkpoints'}: lower config.optimizer.base_lr (now 0.00015)")):
    pretrain.run(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == [2]  # step 4 fell inside the streak: not saved
  config.method.nan_steps = ()  # what lowering the lr does to a real divergence
  state = pretrain.run(config, str(tmp_path))
  assert int(state.step) == 8 and int(state.skipped_steps) == 0
  assert checkpoint_steps(tmp_path) == [4, 6, 8]
  assert checkpoint.read_config_history(str(tmp_path)) == [
      {"step": 2, "changes": {"method.nan_steps": [[2, 3, 4, 5], []]}}]


def test_a_streak_from_the_first_step_says_no_checkpoint_exists_and_what_to_change(
    tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "nan_mae", NaNAtSteps)
  config = tiny_mae_config(num_train_steps=4, max_nonfinite_steps=2, image_summary_every_steps=0)
  config.method.name = "nan_mae"
  config.method.nan_steps = (0, 1, 2, 3)
  with pytest.raises(FloatingPointError, match=re.escape(
      "2 consecutive steps (1..2) had a non-finite loss or gradient and were skipped "
      "(config.max_nonfinite_steps=2). No checkpoint was written before step 1 (none is "
      "written while steps are non-finite): lower config.optimizer.base_lr (now 0.00015)")):
    pretrain.run(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == []


# --- config changes on resume, config errors ---------------------------------------------

def test_resuming_with_a_config_that_changes_the_state_is_refused_before_any_write(tmp_path):
  config = tiny_mae_config(num_train_steps=2, image_summary_every_steps=0)
  pretrain.run(config, str(tmp_path))
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  deeper = tiny_mae_config(num_train_steps=4, image_summary_every_steps=0)
  deeper.model.depth = 3
  with pytest.raises(ValueError, match=re.escape(
      "Changed config fields: model.depth: 2 -> 3, num_train_steps: 2 -> 4. Resume with the "
      f"run's config ({tmp_path}/config.json, left unchanged)")):
    pretrain.run(deeper, str(tmp_path))
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
  longer = tiny_mae_config(num_train_steps=4, image_summary_every_steps=0, batch_size=32)
  longer.optimizer.base_lr = 3e-4
  state = pretrain.run(longer, str(tmp_path))
  assert int(state.step) == 4
  assert checkpoint.read_config(str(tmp_path)).optimizer.base_lr == 3e-4
  assert checkpoint.read_config_history(str(tmp_path)) == [{"step": 2, "changes": {
      "batch_size": [16, 32], "num_train_steps": [2, 4], "optimizer.base_lr": [1.5e-4, 3e-4]}}]


@pytest.mark.parametrize("field,value,message", [
    ("method.name", "beit", "Unknown config.method.name='beit'"),
    ("data.source", "parquet", "config.data.source"),
    ("data.tfds_name", "no_such_dataset", "config.data.tfds_name"),
    ("model.num_heads", 3, "num_heads"),
    ("model.patch_size", 5, "not divisible by config.model.patch_size=5"),
    ("method.mask_ratio", 0.0, "config.method.mask_ratio=0.0 must be in (0, 1)"),
    ("method.mask_ratio", 1.0, "config.method.mask_ratio=1.0 must be in (0, 1)"),
    ("batch_size", 12, "config.batch_size=12 (the global batch) is not divisible by the 8 "
                       "devices: set it to a multiple of 8 (e.g. 8 or 16)"),
    ("data.crop_scale", (0.2,), "config.data.crop_scale=(0.2,) must be a pair (low, high) "
                                "with 0 < low <= high, e.g. --config.data.crop_scale='(0.2, "
                                "1.0)'"),
    ("data.std", (0.2, 0.2, 0.0), "config.data.std=(0.2, 0.2, 0.0) must be 3 per-channel "
                                  "values > 0"),
    ("profile_steps", (3, 2), "config.profile_steps=(3, 2) must be () or (first, last) with "
                              "1 <= first <= last, e.g. --config.profile_steps='(10, 12)'."),
])
def test_config_errors_say_what_to_change(tmp_path, field, value, message):
  config = tiny_mae_config()
  if field == "data.tfds_name":
    config.data.source = "tfds"
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=re.escape(message)):
    pretrain.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing written, not even the workdir
