"""The protocol registry (mim_jax/evaluation/protocols.py): the four protocols, how each
runs, and the entry points (run.evaluate, main) dispatching through it; the evaluation
config files build on defaults that import no evaluation code."""
import ast
import dataclasses
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import REPO, config_file
from mim_jax import config_files
from mim_jax.evaluation import finetune, linear_probe, monitor, protocols, run


def test_the_registry_lists_the_four_protocols_and_how_each_runs():
  assert protocols.names() == ("knn", "linear_probe", "attentive_probe", "finetune")
  assert protocols.names("precomputed") == ("knn", "linear_probe", "attentive_probe")
  assert protocols.names("streamed") == ("linear_probe", "finetune")
  assert {name: protocols.get(name).top1 for name in protocols.names()} == {
      "knn": "knn_top1", "linear_probe": "top1", "attentive_probe": "top1",
      "finetune": "top1"}
  assert protocols.get("finetune").streamed is finetune.FineTune
  assert protocols.get("linear_probe").streamed is linear_probe.StreamedLinearProbe
  assert {name: p.evaluator for name, p in protocols.PROTOCOLS.items() if p.evaluator} == {
      "knn": monitor.KnnEvaluator, "linear_probe": monitor.LinearProbeEvaluator}
  with pytest.raises(ValueError, match=r"config\.protocol='svm'; choose one of"):
    protocols.get("svm")


def test_every_eval_config_runs_a_registered_protocol_in_a_way_it_offers():
  for name in protocols.names():
    path = REPO / "configs" / "eval" / f"{name}.py"
    for variant, _ in config_files.describe(str(path)):
      config = config_file(f"eval/{name}.py", variant)
      assert protocols.is_evaluation(config) and config.protocol == name
      assert config.features in protocols.get(name).features, (name, variant)
  assert not protocols.is_evaluation(config_file("mae.py"))


def test_eval_configs_import_only_the_light_defaults():
  """configs/eval/*.py read mim_jax.defaults, which imports no model or evaluation code."""
  def imported(path):
    """The modules (and `from` names) the file at `path` imports."""
    return {f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names}
  for path in (REPO / "configs" / "eval").glob("*.py"):
    assert imported(path) <= {"mim_jax.config_files", "mim_jax.defaults"}, path
  heavy = ("mim_jax.evaluation", "mim_jax.models", "mim_jax.methods", "mim_jax.training",
           "flax", "jax", "optax")
  assert not [m for m in imported(REPO / "mim_jax" / "defaults.py") if m.startswith(heavy)]


def test_evaluate_dispatches_through_the_registry(monkeypatch, tmp_path):
  streamed = []
  monkeypatch.setattr(run, "train_on_encoder",
                      lambda config, workdir, method_class: streamed.append(method_class))
  run.evaluate(config_file("eval/finetune.py"), str(tmp_path))
  run.evaluate(config_file("eval/linear_probe.py", "published"), str(tmp_path))
  assert streamed == [finetune.FineTune, linear_probe.StreamedLinearProbe]
  # a precomputed protocol runs the function its registry entry names
  spy = dataclasses.replace(protocols.get("knn"),
                            precomputed=lambda config, *args: {"knn_top1": 42.0})
  monkeypatch.setitem(protocols.PROTOCOLS, "knn", spy)
  pair = (np.zeros((2, 4), np.float32), np.zeros(2, np.int32))
  assert run.run_protocol(config_file("eval/knn.py"), pair, pair, 2, None, 1) == {
      "knn_top1": 42.0}
  with pytest.raises(ValueError, match=r"config\.features='streamed' is not offered"):
    run.evaluate(config_file("eval/knn.py", overrides={"features": "streamed"}),
                 str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.protocol='svm'"):
    run.evaluate(config_file("eval/knn.py", overrides={"protocol": "svm"}), str(tmp_path))
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("config,evaluation", [("eval/knn.py", True), ("mae.py", False)])
def test_main_asks_the_registry_whether_a_config_is_an_evaluation(
    monkeypatch, tmp_path, config, evaluation):
  from mim_jax import main
  calls = []
  monkeypatch.setattr(main.evaluation_run, "evaluate", lambda *a: calls.append("evaluate"))
  monkeypatch.setattr(main.pretrain, "run", lambda *a: calls.append("pretrain"))
  argv = ["main", f"--config={REPO / 'configs' / config}", f"--workdir={tmp_path}"]
  monkeypatch.setattr(sys, "argv", argv)
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    assert main.main(argv[:1]) == 0
    monkeypatch.setattr(protocols, "is_evaluation", lambda config: not evaluation)
    assert main.main(argv[:1]) == 0
  assert calls == (["evaluate", "pretrain"] if evaluation else ["pretrain", "evaluate"])
