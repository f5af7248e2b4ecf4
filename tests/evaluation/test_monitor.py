"""The evaluators of `config.evals` during pretraining (mim_jax/evaluation/monitor.py,
built by protocols.during_training) write their top-1 to TensorBoard, computed from the
encoder of that step; a bad entry is refused before anything is compiled."""
import itertools
import re

import pytest

from conftest import event_tags, scalar_series, tiny_mae_config
from mim_jax import data, pretrain
from mim_jax.evaluation import features, knn, linear_probe, pretrained

SUBSETS = dict(num_train=64, num_eval=32, batch_size=32)
PROBE = dict(epochs=3, warmup_epochs=1.0, probe_batch_size=16)


def monitored_config(**evals):
  """Tiny MAE, 2 steps, a 1-block encoder; `evals`: {entry: fields} on top of
  SUBSETS."""
  config = tiny_mae_config(num_train_steps=2, depth=1, image_summary_every_steps=0,
                           checkpoint_every_steps=100)
  for name, fields in evals.items():
    fields = dict(SUBSETS, **fields)
    if name not in config.evals:
      config.evals[name] = dict(protocol=fields.pop("protocol"))
    config.evals[name].update(fields)
  return config


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
  """(config, workdir) of a run with k-NN every step, a k-NN entry of its own name (k=5)
  and the linear probe at the last step."""
  workdir = tmp_path_factory.mktemp("monitored")
  config = monitored_config(knn=dict(every_steps=1),
                            knn_k5=dict(protocol="knn", every_steps=2, k=5),
                            linear_probe=dict(every_steps=2, **PROBE))
  pretrain.run(config, str(workdir))
  return config, workdir


def step_features(config, workdir):
  """(train, test) (features, labels) of the first 64 / 32 examples, from the encoder of
  the run's last checkpoint (step 2)."""
  encoder, params, _ = pretrained.load_encoder(str(workdir))
  split = lambda name, count: features.extract_features(
      encoder.module, params, itertools.islice(
          data.create_eval_iterator(config, name, global_batch_size=32), count // 32))
  return split("train", 64), split("test", 32)


def test_knn_evaluator_writes_knn_top1_of_the_current_encoder(monitored_run):
  config, workdir = monitored_run
  series = scalar_series(workdir, "knn_top1", with_steps=True)
  assert [step for step, _ in series] == [1, 2]
  assert {"nn1_top1", "knn_k5/knn_top1", "knn_k5/nn1_top1"} <= event_tags(workdir)
  # the value at step 2 is k-NN (k=20, T=0.07) on 64 train / 32 test examples of the
  # step-2 encoder, recomputed here from the checkpoint
  train, test = step_features(config, workdir)
  expected = knn.knn_accuracy(*train, *test, num_classes=10)
  assert series[-1][1] == pytest.approx(expected["knn_top1"])
  k5 = knn.knn_accuracy(*train, *test, num_classes=10, k=5)
  assert scalar_series(workdir, "knn_k5/knn_top1") == [pytest.approx(k5["knn_top1"])]
  assert 0.0 <= series[-1][1] <= 100.0


def test_linear_probe_evaluator_writes_the_probe_top1_of_the_current_encoder(monitored_run):
  config, workdir = monitored_run
  series = scalar_series(workdir, "linear_probe_top1", with_steps=True)
  assert [step for step, _ in series] == [2]  # every_steps=2: the last step only
  # the same probe (3 epochs, batch 16, base lr 6.4, seed 0) on the step-2 features
  train, test = step_features(config, workdir)
  expected = linear_probe.train_linear_probe(*train, *test, num_classes=10, epochs=3,
                                             batch_size=16, base_lr=6.4, warmup_epochs=1.0,
                                             seed=config.seed)
  assert series[0][1] == pytest.approx(expected["top1"])
  assert series[0][1] * 32 / 100 == pytest.approx(round(series[0][1] * 32 / 100))


@pytest.mark.parametrize("evals,field", [
    (dict(knn=dict(every_steps=1, pool="tokens")), "config.evals.knn.pool"),
    (dict(knn=dict(every_steps=1, batch_size=12)), "config.evals.knn.batch_size"),
    (dict(knn=dict(every_steps=1, k=0)), "config.evals.knn.k"),
    (dict(linear_probe=dict(every_steps=1, epochs=0)), "config.evals.linear_probe.epochs"),
    (dict(knn=dict(every_steps=-1)), "config.evals.knn.every_steps"),
    (dict(svm=dict(protocol="svm", every_steps=1)), "config.evals.svm.protocol='svm'"),
    (dict(tokens=dict(protocol="attentive_probe")), "config.evals.tokens.protocol"),
    (dict(probe=dict(protocol="linear_probe", every_steps=1, k=5)),
     "config.evals.probe has no field 'k'"),
])
def test_bad_evals_entries_are_refused_before_compilation(tmp_path, monkeypatch, evals,
                                                          field):
  def no_compilation(*args, **kwargs):
    raise AssertionError("compiled before the config was checked")
  monkeypatch.setattr(pretrain, "train_and_evaluate", no_compilation)
  with pytest.raises(ValueError, match=re.escape(field)):
    pretrain.run(monitored_config(**evals), str(tmp_path))
  assert not list(tmp_path.iterdir())
