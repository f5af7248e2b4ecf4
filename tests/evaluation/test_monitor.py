"""The k-NN monitor of pretraining (mim_jax/evaluation/monitor.py) writes knn_top1 to
TensorBoard, computed from the encoder of that step."""
import itertools

import pytest

from conftest import event_tags, scalar_series, tiny_mae_config
from mim_jax import data, pretrain
from mim_jax.evaluation import features, knn, pretrained


def monitored_config(**monitor):
  config = tiny_mae_config(num_train_steps=2, image_summary_every_steps=0,
                           checkpoint_every_steps=100)
  config.model.depth = 1
  config.knn_monitor.update(dict(every_steps=1, num_train=64, num_eval=32, batch_size=32),
                            **monitor)
  return config


def test_knn_monitor_writes_knn_top1_of_the_current_encoder(tmp_path):
  config = monitored_config()
  pretrain.run(config, str(tmp_path))
  series = scalar_series(tmp_path, "knn_top1", with_steps=True)
  assert [step for step, _ in series] == [1, 2]
  assert "nn1_top1" in event_tags(tmp_path)
  # the value at step 2 is k-NN (k=20, T=0.07) on 64 train / 32 test examples of the
  # step-2 encoder, recomputed here from the checkpoint
  encoder, params, _ = pretrained.load_encoder(str(tmp_path))
  split = lambda name, count: features.extract_features(
      encoder.module, params, itertools.islice(
          data.create_eval_iterator(config, name, global_batch_size=32), count // 32))
  train_x, train_y = split("train", 64)
  test_x, test_y = split("test", 32)
  expected = knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=10)
  assert series[-1][1] == pytest.approx(expected["knn_top1"])
  assert 0.0 <= series[-1][1] <= 100.0


@pytest.mark.parametrize("monitor,field", [
    (dict(pool="tokens"), "knn_monitor.pool"),
    (dict(batch_size=12), "knn_monitor.batch_size"),
    (dict(k=0), "knn_monitor.k"),
])
def test_knn_monitor_config_errors_come_before_training(tmp_path, monitor, field):
  with pytest.raises(ValueError, match=field):
    pretrain.run(monitored_config(**monitor), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
