"""Fine-tuning: layer-wise lr decay, mixup/cutmix/label smoothing, and the protocol end to
end on a tiny pretraining checkpoint (warm start, metrics JSON, resume)."""
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import checkpoint_steps, config_file, scalar_series, tiny_mae_config
from mim_jax import defaults, optim, pretrain
from mim_jax.evaluation import finetune, mixup, pretrained
from mim_jax.models import vit


def finetune_config_file():
  return config_file("eval/finetune.py", "vit_base")


def test_layer_decay_multipliers_equal_the_closed_form():
  encoder = vit.ViTEncoder(image_size=8, patch_size=4, width=8, depth=3, num_heads=2)
  classifier = finetune.ViTClassifier(encoder, num_classes=5)
  params = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 8, 8, 3)))["params"])
  params = {**params, "rel_pos_bias": {"relative_position_bias_table": jnp.zeros((3, 2))}}
  scales = optim.layer_decay_multipliers(params, 0.65, depth=3)
  d = 0.65
  expected = {  # decay^(depth + 1 - layer id): embeddings 0, block i -> i + 1, rest 4
      ("encoder", "patch_embed", "kernel"): d**4, ("encoder", "cls_token"): d**4,
      ("encoder", "blocks_0", "attn", "qkv", "kernel"): d**3,
      ("encoder", "blocks_1", "norm1", "bias"): d**2,
      ("encoder", "blocks_2", "mlp", "fc2", "kernel"): d**1,
      ("fc_norm", "scale"): 1.0, ("head", "kernel"): 1.0, ("head", "bias"): 1.0,
      ("rel_pos_bias", "relative_position_bias_table"): 1.0}
  for path, value in expected.items():
    leaf = scales
    for key in path:
      leaf = leaf[key]
    assert leaf == pytest.approx(value), path
  assert "norm" not in params["encoder"]  # mean pooling replaces the final norm by fc_norm
  scanned = {"encoder": {"blocks": {"layers": {"mlp": {"fc1": {
      "kernel": jnp.zeros((3, 8, 32)), "bias": jnp.zeros((3, 32))}}}}}}  # scan_layers
  scanned = optim.layer_decay_multipliers(scanned, d, depth=3)["encoder"]["blocks"]["layers"]
  np.testing.assert_allclose(scanned["mlp"]["fc1"]["kernel"][:, 0, 0], [d**3, d**2, d])
  assert scanned["mlp"]["fc1"]["bias"].shape == (3, 1)

  # the optimizer applies them: AdamW's first update scaled per layer
  config = ml_collections.ConfigDict({"optimizer": defaults.base_config().optimizer,
                                      "model": {"depth": 3}})
  grads = jax.tree.map(lambda x: jnp.ones(x.shape), params)
  values = jax.tree.map(lambda x: jnp.full(x.shape, 0.5), params)
  plain = optim.create_optimizer(config, 1e-2)
  config.optimizer.layer_decay = d
  decayed = optim.create_optimizer(config, 1e-2)
  ref, _ = jax.jit(plain.update)(grads, plain.init(values), values)
  out, _ = jax.jit(decayed.update)(grads, decayed.init(values), values)
  jax.tree.map(lambda o, r, s: np.testing.assert_allclose(o, r * s, rtol=1e-6), out, ref,
               scales)


def constant_images(batch, size=16):
  """Image i filled with the value i: where each pixel came from is its value."""
  return jnp.broadcast_to(jnp.arange(batch, dtype=jnp.float32)[:, None, None, None],
                          (batch, size, size, 3))


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_cutmix_lambda_is_the_kept_area(mixup_alpha,
                                                                     cutmix_alpha):
  batch, size, classes = 6, 16, 10
  images = constant_images(batch, size)
  labels = jnp.arange(batch) % classes
  fn = jax.jit(lambda key: mixup.mixup_cutmix(
      key, images, labels, num_classes=classes, mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha, smoothing=0.1))
  kinds = set()
  for seed in range(12):
    mixed, targets, lam = jax.device_get(fn(jax.random.PRNGKey(seed)))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert 0.0 <= lam <= 1.0
    own = np.isclose(mixed, np.arange(batch)[:, None, None, None])
    partner = np.isclose(mixed, np.arange(batch)[::-1, None, None, None])
    if own.all(axis=(1, 2, 3)).all() and lam == 1.0:
      continue  # nothing mixed
    if (own | partner).all():  # cutmix: every pixel is its own or its partner's
      kinds.add("cutmix")
      np.testing.assert_allclose(partner[..., 0].mean(axis=(1, 2)), 1.0 - lam, atol=1e-6)
    else:
      kinds.add("mixup")
      np.testing.assert_allclose(mixed, lam * np.asarray(images)
                                 + (1 - lam) * np.asarray(images)[::-1], rtol=1e-5)
    expected = (lam * mixup.smooth_one_hot(labels, classes, 0.1)
                + (1 - lam) * mixup.smooth_one_hot(labels[::-1], classes, 0.1))
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
  assert kinds == ({"mixup"} if cutmix_alpha == 0 else {"cutmix"} if mixup_alpha == 0
                   else {"mixup", "cutmix"})


def test_label_smoothing_and_soft_cross_entropy_by_hand():
  # 4 classes, s = 0.1: on = 1 - 0.1 + 0.025 = 0.925, off = 0.025
  y = np.asarray(mixup.smooth_one_hot(jnp.array([0, 2]), 4, 0.1))
  np.testing.assert_allclose(y, [[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]],
                             rtol=1e-6)
  # λ = 0.7 mixes example 0 with example 1: 0.7·0.925 + 0.3·0.025 = 0.655, 0.7·0.025 +
  # 0.3·0.925 = 0.295
  t = np.asarray(mixup.mix_targets(jnp.array([0, 2]), 4, 0.7, 0.1))
  np.testing.assert_allclose(t[0], [0.655, 0.025, 0.295, 0.025], rtol=1e-6)
  np.testing.assert_allclose(t[1], [0.295, 0.025, 0.655, 0.025], rtol=1e-6)
  # uniform logits: log 4 whatever the target; one-hot target: −log softmax at the label
  assert float(finetune.soft_cross_entropy(jnp.zeros((2, 4)), t)) == pytest.approx(np.log(4))
  logits = jnp.array([[2.0, 0.0, 0.0, 0.0]])
  expected = -(2.0 - np.log(np.exp(2.0) + 3.0))
  assert float(finetune.soft_cross_entropy(logits, jnp.eye(4)[:1])) == pytest.approx(expected)


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  config = tiny_mae_config(num_train_steps=1, image_summary_every_steps=0)
  config.model.depth = 1  # compiles faster; the layer-decay test covers depth 3
  pretrain.run(config, str(workdir))
  return workdir


def tiny_finetune_config(pretrain_dir):
  """configs/eval/finetune.py:tiny on the pretraining run's data (synthetic, 10 classes)."""
  return config_file("eval/finetune.py", "tiny", {"pretrained": str(pretrain_dir)})


def checkpointed_params(workdir, step):
  """The params of `workdir`'s checkpoint `step`, read without a target structure."""
  import orbax.checkpoint as ocp
  path = workdir / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.resolve())["params"]


def test_finetune_starts_from_the_pretrained_encoder_writes_metrics_and_resumes(
    tmp_path, pretrain_dir, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  config = tiny_finetune_config(pretrain_dir)
  resolved = finetune.finetune_config(config)
  assert resolved.data.image_size == 16 and resolved.model.width == 32
  assert resolved.data.num_classes == 10 and tuple(resolved.data.crop_scale) == (0.08, 1.0)
  assert resolved.model.drop_path_rate == pytest.approx(0.1)

  workdir = tmp_path / "finetune"
  assert finetune.run(config, str(workdir), stop_after_step=1) is None
  assert any(r.getMessage().startswith("Fine-tuning: 4 steps") for r in caplog.records)
  assert not any("Pretraining" in r.getMessage() for r in caplog.records)
  assert checkpoint_steps(workdir) == [1]
  assert not (workdir / finetune.METRICS_FILE).exists()
  # The warmup's lr is 0 at the first step, so after it the params are still the start:
  # the pretrained encoder (its final norm replaced by fc_norm) and a small fresh head.
  start = checkpointed_params(workdir, 1)
  _, encoder_params, _ = pretrained.load_encoder(str(pretrain_dir))
  assert set(encoder_params) - set(start["encoder"]) == {"norm"}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               start["encoder"], {k: v for k, v in encoder_params.items() if k != "norm"})
  head = np.asarray(start["head"]["kernel"])
  assert 0 < np.abs(head).max() < 1e-4 and not np.asarray(start["head"]["bias"]).any()

  metrics = finetune.run(config, str(workdir))
  assert metrics["step"] == 4 and 0.0 <= metrics["top1"] <= 100.0
  assert json.loads((workdir / finetune.METRICS_FILE).read_text()) == metrics
  # resumed, not restarted: each step logged once, top-1 at steps 2 and 4
  assert [s for s, _ in scalar_series(workdir, "loss", with_steps=True)] == [1, 2, 3, 4]
  top1 = scalar_series(workdir, "eval_top1", with_steps=True)
  assert [s for s, _ in top1] == [2, 4]
  assert top1[-1][1] == pytest.approx(metrics["top1"])
  lams = scalar_series(workdir, "mix_lambda")
  assert all(0.0 <= v <= 1.0 for v in lams) and any(v < 1.0 for v in lams)
  final = checkpointed_params(workdir, 4)
  assert not np.array_equal(np.asarray(final["encoder"]["patch_embed"]["kernel"]),
                            np.asarray(start["encoder"]["patch_embed"]["kernel"]))


def test_finetune_config_errors_name_the_field(tmp_path, pretrain_dir):
  config = tiny_finetune_config(pretrain_dir)
  config.pretrained = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.pretrained"):
    finetune.run(config, str(tmp_path / "a"))
  config = tiny_finetune_config(pretrain_dir)
  config.method.pool = "max"
  with pytest.raises(ValueError, match="config.method.pool"):
    finetune.run(config, str(tmp_path / "b"))
  config = tiny_finetune_config(pretrain_dir)
  config.eval_batch_size = 12
  with pytest.raises(ValueError, match="config.eval_batch_size"):
    finetune.run(config, str(tmp_path / "c"))
  (tmp_path / "no_checkpoints").mkdir()
  shutil.copy(os.path.join(pretrain_dir, "config.json"), tmp_path / "no_checkpoints")
  config = tiny_finetune_config(str(tmp_path / "no_checkpoints"))
  with pytest.raises(FileNotFoundError, match="config.pretrained=.* has no checkpoints"):
    finetune.run(config, str(tmp_path / "d"))
  assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written
