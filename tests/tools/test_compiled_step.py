"""mim_jax/tools/compiled_step.py's evaluation steps: the streamed linear probe and
fine-tuning on a tiny MAE's encoder, built, compiled and timed like a pretraining step,
with FLOP counts that match what each step computes; the table of timed steps."""
import jax
import numpy as np
import pytest
from conftest import REPO, config_file, tiny_mae_config

from mim_jax.tools import compiled_step
from mim_jax.tools.compiled_step import CompiledStep, evaluation_config


def eval_step(protocol, **model):
  """`protocol`'s ViT-B recipe on MAE's shrunk ViT-B encoder, batch 16, one step run."""
  config = evaluation_config(protocol, tiny_mae_config())
  config.batch_size = 16
  config.model.update(model)
  step = CompiledStep(config)
  step.run(1)
  return step


@pytest.fixture(scope="module")
def steps():
  return {protocol: eval_step(protocol) for protocol in ("linear_probe", "finetune")}


def test_evaluation_steps_run_on_the_pretraining_encoder_with_a_1000_class_head(steps):
  probe, finetune = steps["linear_probe"], steps["finetune"]
  for step in (probe, finetune):
    assert np.isfinite(step.loss)
    assert step.config.data.num_classes == compiled_step.IMAGENET_CLASSES
    assert (step.config.model.width, step.config.data.image_size) == (32, 16)
  # the probe trains only its head; the frozen encoder and BN statistics are targets
  assert set(probe.state.params) == {"head"}
  assert set(probe.state.target_params) == {"encoder", "batch_stats"}
  assert set(finetune.state.params) == {"encoder", "fc_norm", "head"}  # MAE: mean pooling
  assert probe.state.params["head"]["kernel"].shape == (32, 1000)
  table = compiled_step.results_table([(s.config, s.summary(1.0)) for s in (probe, finetune)],
                                      steps=1)
  assert "| linear_probe (mae) 32w×2, patch 4 | 16 | 16 |" in table
  assert "| finetune (mae) 32w×2, patch 4 |" in table


def test_the_probe_counts_the_encoder_forward_and_fine_tuning_about_three_times_it(steps):
  probe, finetune = steps["linear_probe"], steps["finetune"]
  per_device = probe.config.batch_size // jax.device_count()  # XLA counts one device's
  params = sum(x.size for x in jax.tree.leaves(probe.state.target_params["encoder"]))
  tokens = (16 // 4)**2 + 1
  forward = 2 * params * tokens  # 2·params·tokens: the encoder's matmuls, per image
  probe_flops = probe.model_flops / per_device
  # + attention, the head (forward and its gradient), LayerNorm/GELU/softmax, LARS
  assert forward < probe_flops < 2 * forward
  # forward + backward (≈ 2 × forward) of the whole ViT, AdamW over its parameters
  assert 2 < finetune.model_flops / probe.model_flops < 4
  assert probe.model_flops == probe.step_flops  # no remat


def test_an_unknown_or_precomputed_evaluation_is_refused_with_what_to_name_instead():
  with pytest.raises(ValueError, match=r"Unknown evaluation 'knn'.*\['finetune', 'linear"):
    evaluation_config("knn", tiny_mae_config())
  with pytest.raises(ValueError, match="not a streamed evaluation.*finetune"):
    evaluation_config(str(REPO / "configs" / "eval" / "linear_probe.py") + ":cifar",
                      tiny_mae_config())


def test_the_table_has_a_row_per_timed_step():
  config = config_file("quickstart.py")
  summary = dict(compile_s=8.04, step_s=0.04353, images_per_s=183.8,
                 model_gflops_per_image=0.2318, step_gflops_per_image=0.2318, mfu=0.4123)
  table = compiled_step.results_table([(config, summary)], steps=5)
  assert ("| mae 192w×12, patch 4 | 32 | 64 | float32 / none / False / xla | 8 × cpu | 8.0 | "
          "0.04353 | 184 | 0.232 | 0.232 | 41.2% |") in table
  assert table.endswith("Median of 5 timed steps after one warm-up step.\n")
