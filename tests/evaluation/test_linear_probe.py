"""mim_jax/evaluation/linear_probe.py: the LARS-trained linear probe on a separable set,
its size warnings, and the streamed (published) probe end to end: frozen sharded encoder,
exact resume."""
import jax
import numpy as np
import pytest

from conftest import config_file, scalar_series, tiny_mae_config
from mim_jax import optim, pretrain, sharding
from mim_jax.training import state as train_state
from mim_jax.evaluation import downstream, linear_probe, pretrained, run


def separable_set(rng, directions, n, noise):
  """Class c at directions[c] (orthogonal, length 3) plus a shared offset and noise."""
  labels = rng.integers(0, len(directions), n)
  x = directions[labels] + noise * rng.normal(size=(n, directions.shape[1])) + 5.0
  return x.astype(np.float32), labels


def test_linear_probe_learns_a_linearly_separable_set():
  rng = np.random.default_rng(0)
  directions = np.linalg.qr(rng.normal(size=(16, 16)))[0][:4] * 3.0
  train_x, train_y = separable_set(rng, directions, 512, 0.5)
  test_x, test_y = separable_set(rng, directions, 256, 0.5)
  logged = []
  # LARS moves a weight matrix by about lr·0.001/(1 − 0.9) of its norm per step, so 160
  # steps need a far larger lr than ImageNet's 7k steps at lr 0.1·16384/256.
  result = linear_probe.train_linear_probe(
      train_x, train_y, test_x, test_y, num_classes=4, epochs=20, batch_size=64,
      base_lr=16.0, warmup_epochs=2,
      log_fn=lambda epoch, scalars: logged.append((epoch, scalars)))
  assert result["top1"] >= 95.0
  assert result["steps"] == 20 * 8 and result["peak_lr"] == pytest.approx(16.0 * 64 / 256)
  assert [epoch for epoch, _ in logged] == list(range(1, 21))
  assert logged[-1][1]["train_loss"] < logged[0][1]["train_loss"]


def test_size_warnings_name_the_problem_and_the_fix():
  assert linear_probe.size_warnings(256, 10_000, 3_510, "fix it") == []
  too_big, too_short = linear_probe.size_warnings(16384, 9469, 90, "use :cifar")
  assert too_big == ("The probe's batch of 16384 exceeds the 9469 training examples: use "
                     ":cifar.")
  assert "only 90 optimizer steps" in too_short and too_short.endswith("use :cifar.")
  batch, per_epoch, warnings = linear_probe.probe_batches(512, 300, 90, "linear_probe")
  assert (batch, per_epoch) == (300, 1)
  assert "lower config.linear_probe.batch_size" in warnings[0] and "90 optimizer" in warnings[1]


# --- the streamed (published) probe, run by the generic trainer -------------------------

@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
  """A tiny MAE (1 block) pretrained for 1 step on 16 px synthetic images, 10 classes."""
  workdir = tmp_path_factory.mktemp("pretrain")
  config = tiny_mae_config(num_train_steps=1, image_summary_every_steps=0)
  config.model.depth = 1
  pretrain.run(config, str(workdir))
  return str(workdir)


def streamed_config(pretrain_dir):
  """configs/eval/linear_probe.py:published shrunk: 4 steps of batch 16, the encoder
  sharded FSDP over the 8 devices."""
  config = config_file("eval/linear_probe.py", "published", {"pretrained": pretrain_dir})
  config.update(batch_size=16, num_train_steps=4, warmup_steps=1, eval_batch_size=16,
                log_every_steps=1, checkpoint_every_steps=2)
  config.sharding.update(mode="fsdp", fsdp_min_size=64)
  return config


def saved_state(workdir, step):
  """params and target_params of `workdir`'s checkpoint `step`, read without a target."""
  import orbax.checkpoint as ocp
  restored = ocp.StandardCheckpointer().restore(
      (workdir / "checkpoints" / str(step) / "state").resolve())
  return {k: restored[k] for k in ("params", "target_params")}


def test_streamed_probe_trains_only_the_head_on_the_frozen_encoder_and_resumes_exactly(
    tmp_path, pretrain_dir):
  config = streamed_config(pretrain_dir)
  resolved = downstream.resolve_config(config)
  assert (resolved.pool, resolved.block) == ("cls", None)  # MAE's declared probe feature
  assert tuple(resolved.data.crop_scale) == (0.08, 1.0) and resolved.optimizer.name == "lars"
  # The frozen encoder sits in the target params, sharded like pretraining's.
  method = linear_probe.StreamedLinearProbe(resolved, 4)
  mesh = sharding.create_mesh(resolved)
  tx = optim.create_optimizer(resolved, lambda count: 0.1)
  state, _ = train_state.create_train_state(method, tx, resolved, mesh)
  assert set(state.params) == {"head"}
  assert set(state.target_params) == {"encoder", "batch_stats"}
  kernel = state.target_params["encoder"]["patch_embed"]["kernel"]  # [48, 32]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  del state

  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  metrics = run.evaluate(config, str(straight))
  assert run.train_on_encoder(config, str(resumed), linear_probe.StreamedLinearProbe,
                              stop_after_step=2) is None
  assert run.evaluate(config, str(resumed)) == metrics
  assert metrics["protocol"] == "linear_probe" and metrics["step"] == 4
  assert 0.0 <= metrics["top1"] <= 100.0 and np.isfinite(metrics["loss"])
  assert [w.split(":")[0] for w in metrics["warnings"]] == [
      "The probe takes only 4 optimizer steps in all (fewer than 100), too few to train it"]
  a, b = saved_state(straight, 4), saved_state(resumed, 4)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit
  # The encoder is the pretrained one, untouched; the BatchNorm statistics have moved.
  _, encoder_params, _ = pretrained.load_encoder(pretrain_dir)
  jax.tree.map(np.testing.assert_array_equal, a["target_params"]["encoder"], encoder_params)
  stats = a["target_params"]["batch_stats"]["bn"]
  assert np.abs(stats["mean"]).min() > 0 and not np.allclose(stats["var"], 1.0)
  assert [s for s, _ in scalar_series(resumed, "train_top1", with_steps=True)] == [1, 2, 3, 4]
  assert scalar_series(straight, "eval_top1") == [pytest.approx(metrics["top1"])]
