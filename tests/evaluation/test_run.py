"""k-NN, linear probe, attentive probe, intermediate-block features and the eval entry."""
import json
import math
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import REPO, config_file, scalar_series, tiny_mae_config
from mim_jax import pretrain
from mim_jax.evaluation import attentive_probe, features, knn, linear_probe, run
from mim_jax.models import vit


def unit(angle_degrees):
  """2-D unit vector at `angle_degrees`: its cosine with (1, 0) is cos(angle)."""
  a = math.radians(angle_degrees)
  return [math.cos(a), math.sin(a)]


def at_similarity(s):
  return unit(math.degrees(math.acos(s)))


def test_knn_is_perfect_on_separable_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 16)) * 4
  make = lambda n: (lambda y: (centres[y] + rng.normal(size=(n, 16)), y))(
      rng.integers(0, 5, n))
  train_x, train_y = make(200)
  test_x, test_y = make(50)
  assert knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=5) == {
      "knn_top1": 100.0, "nn1_top1": 100.0}


def test_knn_hand_made_weights_and_ties():
  query = np.array([[1.0, 0.0]], np.float32)
  far = unit(180)  # similarity -1: never among the top k below
  # One class-0 neighbour at similarity 0.9, three class-1 neighbours at 0.5 (equal):
  # majority vote says 1; weights exp(s/T) give class 0 1 vs class 1 3·e^(−0.4/T), so
  # class 0 at T = 0.07 (3·e^−5.71 = 0.0099) and class 1 at T = 1 (3·e^−0.4 = 2.01).
  train = np.array([far, at_similarity(0.5), at_similarity(0.9), at_similarity(0.5),
                    at_similarity(0.5)], np.float32) * [[1.0], [2.0], [0.5], [3.0], [1.0]]
  labels = np.array([1, 1, 0, 1, 1])
  vote, nn1 = knn.knn_predict(train, labels, query, num_classes=2, k=4, temperature=0.07)
  assert (vote.tolist(), nn1.tolist()) == ([0], [0])
  vote, _ = knn.knn_predict(train, labels, query, num_classes=2, k=4, temperature=1.0)
  assert vote.tolist() == [1]
  # 1-NN and the vote disagree: class 0 at 0.9 vs three class-1 at 0.88:
  # 1 vs 3·e^(−0.02/0.07) = 2.25.
  train = np.array([at_similarity(0.88)] * 3 + [at_similarity(0.9), far], np.float32)
  labels = np.array([1, 1, 1, 0, 0])
  vote, nn1 = knn.knn_predict(train, labels, query, num_classes=2, k=4)
  assert (vote.tolist(), nn1.tolist()) == ([1], [0])
  # Equal similarities (angles ±40°), class 2 first in the bank: the 1-NN tie goes to the
  # lower training index (class 2), the equal vote to the lower class index (class 1).
  train = np.array([far, unit(40), unit(-40)], np.float32)
  labels = np.array([0, 2, 1])
  vote, nn1 = knn.knn_predict(train, labels, query, num_classes=3, k=2)
  assert (vote.tolist(), nn1.tolist()) == ([1], [2])
  # Accuracy in percent, chunked queries: the 3 queries in chunks of 2.
  queries = np.array([unit(40), unit(-40), unit(180)], np.float32)
  accuracy = knn.knn_accuracy(train, labels, queries, np.array([2, 2, 0]), num_classes=3,
                              k=1, chunk_size=2)
  assert accuracy == {"knn_top1": pytest.approx(200 / 3), "nn1_top1": pytest.approx(200 / 3)}


def test_knn_rejects_bad_input():
  x, y = np.ones((4, 3)), np.array([0, 1, 2, 3])
  with pytest.raises(ValueError, match="num_classes=3"):
    knn.knn_predict(x, y, x, num_classes=3)
  with pytest.raises(ValueError, match="pool='cls'"):
    knn.knn_predict(np.ones((4, 2, 3)), y, x, num_classes=4)


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


def test_attentive_probe_finds_the_one_informative_token():
  # Each example: 8 noise tokens and, at a random position, a marker plus its class's
  # prototype; the query must learn to attend to the marked token.
  rng = np.random.default_rng(3)
  marker, prototypes = rng.normal(size=16) * 2, rng.normal(size=(4, 16)) * 2

  def make(n):
    labels = rng.integers(0, 4, n)
    tokens = rng.normal(size=(n, 9, 16))
    tokens[np.arange(n), rng.integers(1, 9, n)] = marker + prototypes[labels]
    return tokens.astype(np.float32), labels

  (train_x, train_y), (test_x, test_y) = make(512), make(256)
  result = attentive_probe.train_attentive_probe(
      train_x, train_y, test_x, test_y, num_classes=4, epochs=20, batch_size=64,
      num_heads=2, warmup_epochs=1)
  assert result["top1"] >= 90.0
  with pytest.raises(ValueError, match="pool='tokens'"):
    attentive_probe.train_attentive_probe(train_x[:, 0], train_y, test_x[:, 0], test_y,
                                          num_classes=4, num_heads=2)


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


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
  """A tiny MAE pretrained for 2 steps on 16 px synthetic images (4 classes)."""
  workdir = tmp_path_factory.mktemp("pretrain")
  config = tiny_mae_config(num_train_steps=2, checkpoint_every_steps=2,
                           image_summary_every_steps=0)
  config.data.synthetic_train_size = 128
  config.data.synthetic_eval_size = 64
  config.data.num_classes = 4
  pretrain.run(config, str(workdir))
  return str(workdir)


def eval_config(base, pretrained, **fields):
  config = config_file(f"eval/{base}.py")
  config.pretrained = pretrained
  config.eval_batch_size = 32
  config.update(fields)
  return config


def test_knn_end_to_end_through_main(pretrained_dir, tmp_path, monkeypatch):
  from mim_jax import main
  argv = ["main", f"--config={REPO / 'configs/eval/knn.py'}",
          f"--config.pretrained={pretrained_dir}", "--config.pool=mean",
          "--config.block=1", "--config.eval_batch_size=32", f"--workdir={tmp_path}"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    main.main(argv[:1])
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert (metrics["protocol"], metrics["pool"], metrics["block"]) == ("knn", "mean", 1)
  assert (metrics["num_train"], metrics["num_test"], metrics["num_classes"]) == (128, 64, 4)
  assert metrics["feature_shape"] == [32] and metrics["pretrained_step"] == 2
  for name in ("knn_top1", "nn1_top1"):
    assert 0.0 <= metrics[name] <= 100.0
    assert metrics[name] * 64 / 100 == pytest.approx(round(metrics[name] * 64 / 100))
    assert scalar_series(tmp_path, name, with_steps=True) == [(2, pytest.approx(metrics[name]))]


@pytest.mark.parametrize("protocol", ["linear_probe", "attentive_probe"])
def test_probe_end_to_end(pretrained_dir, tmp_path, protocol):
  config = eval_config(protocol, pretrained_dir)
  config[protocol].update(epochs=3, batch_size=32, warmup_epochs=1)
  returned = run.evaluate(config, str(tmp_path))
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics.keys() == returned.keys() and metrics["top1"] == returned["top1"]
  assert metrics["feature_shape"] == ([32] if protocol == "linear_probe" else [17, 32])
  assert metrics["steps"] == 3 * 4 and 0.0 <= metrics["top1"] <= 100.0
  assert scalar_series(tmp_path, "top1") == [pytest.approx(metrics["top1"])]
  losses = scalar_series(tmp_path, "probe/train_loss")
  assert len(losses) == 3 and all(np.isfinite(losses))


def test_eval_config_errors_name_the_field(pretrained_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.pretrained"):
    run.evaluate(eval_config("knn", str(tmp_path / "missing")), str(tmp_path))
  with pytest.raises(ValueError, match="config.pretrained"):
    run.evaluate(eval_config("knn", None), str(tmp_path))
  with pytest.raises(ValueError, match="config.protocol"):
    run.evaluate(eval_config("knn", pretrained_dir, protocol="svm"), str(tmp_path))
  with pytest.raises(ValueError, match="pool"):
    run.evaluate(eval_config("linear_probe", pretrained_dir, pool="tokens"), str(tmp_path))
  with pytest.raises(ValueError, match="config.block"):
    run.evaluate(eval_config("knn", pretrained_dir, block=3), str(tmp_path))
  with pytest.raises(ValueError, match="config.data.image_size"):
    config = eval_config("knn", pretrained_dir)
    config.data.image_size = 18
    run.evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"config.pretrained_step=5 is not among .*\[2\]"):
    config = eval_config("knn", pretrained_dir)
    config.pretrained_step = 5
    run.evaluate(config, str(tmp_path))
  no_checkpoints = tmp_path / "no_checkpoints"
  no_checkpoints.mkdir()
  shutil.copy(os.path.join(pretrained_dir, "config.json"), no_checkpoints)
  with pytest.raises(FileNotFoundError, match="config.pretrained=.* has no checkpoints"):
    run.evaluate(eval_config("knn", str(no_checkpoints)), str(tmp_path))
  assert not (tmp_path / "metrics.json").exists()
