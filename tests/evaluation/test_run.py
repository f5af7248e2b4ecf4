"""mim_jax/evaluation/run.py: the evaluation entry (k-NN through main, the probes) on a
tiny pretraining run, and its config errors."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import REPO, config_file, scalar_series, tiny_mae_config
from mim_jax import pretrain
from mim_jax.evaluation import run


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


def eval_config(base, pretrained, variant=None, **fields):
  config = config_file(f"eval/{base}.py", variant)
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
  config = eval_config(protocol, pretrained_dir, "cifar")  # features computed once
  config[protocol].update(epochs=3, batch_size=32, warmup_epochs=1)
  returned = run.evaluate(config, str(tmp_path))
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics.keys() == returned.keys() and metrics["top1"] == returned["top1"]
  assert metrics["feature_shape"] == ([32] if protocol == "linear_probe" else [17, 32])
  assert metrics["steps"] == 3 * 4 and 0.0 <= metrics["top1"] <= 100.0
  assert scalar_series(tmp_path, "top1") == [pytest.approx(metrics["top1"])]
  losses = scalar_series(tmp_path, "probe/train_loss")
  assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_token_cache_encodes_a_checkpoint_once_for_every_pool_and_protocol(
    pretrained_dir, tmp_path, monkeypatch):
  from mim_jax.evaluation import features  # pylint: disable=import-outside-toplevel
  configs = {"knn_cls": eval_config("knn", pretrained_dir, pool="cls"),
             "knn_mean": eval_config("knn", pretrained_dir, pool="mean"),
             "attentive": eval_config("attentive_probe", pretrained_dir, "cifar")}
  configs["attentive"].attentive_probe.update(epochs=2, batch_size=32, warmup_epochs=1)
  alone = {name: run.evaluate(c, str(tmp_path / "alone" / name)) for name, c in configs.items()}
  pools = []
  extract = features.extract_features
  monkeypatch.setattr(features, "extract_features",
                      lambda *a, **k: pools.append(k["pool"]) or extract(*a, **k))
  cache = run.TokenCache()
  cached = {name: run.evaluate(c, str(tmp_path / "cached" / name), cache)
            for name, c in configs.items()}
  assert pools == ["tokens", "tokens"]  # train and test split, once for all three
  # the same features up to float32 rounding (pooled here, in the forward there): the
  # same top-1 within one of the 64 test images
  for name, key in (("knn_cls", "knn_top1"), ("knn_mean", "knn_top1"),
                    ("attentive", "top1")):
    assert abs(cached[name][key] - alone[name][key]) <= 100 / 64 + 1e-9, name
  for name in ("knn_cls", "knn_mean"):  # the features themselves, through their statistics
    for stat in ("test_effective_rank", "test_mean_cosine"):
      assert cached[name][stat] == pytest.approx(alone[name][stat], rel=1e-4), (name, stat)
  assert cached["knn_cls"]["test_mean_cosine"] != pytest.approx(
      cached["knn_mean"]["test_mean_cosine"], rel=1e-3)  # which the pools tell apart
  assert cached["knn_mean"]["feature_shape"] == [32]
  # another block is another extraction
  run.evaluate(eval_config("knn", pretrained_dir, pool="cls", block=1),
               str(tmp_path / "block1"), cache)
  assert pools == ["tokens"] * 4


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
