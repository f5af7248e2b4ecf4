"""mim_jax/evaluation/finetune.py: the protocol end to end on a tiny pretraining
checkpoint (warm start, metrics JSON, resume) and its config errors. Layer-wise lr decay
is tested in tests/test_optim.py, mixup/cutmix/label smoothing in test_mixup.py."""
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import checkpoint_steps, scalar_series, shrunk_config, tiny_mae_config
from mim_jax import pretrain
from mim_jax.evaluation import downstream, finetune, pretrained, run


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  config = tiny_mae_config(num_train_steps=1, image_summary_every_steps=0)
  config.model.depth = 1  # compiles faster; tests/test_optim.py's layer-decay test covers depth 3
  pretrain.run(config, str(workdir))
  return workdir


def tiny_finetune_config(pretrain_dir):
  """Fine-tuning's ViT-B recipe shrunk (no checkpoint before the end) on the pretraining
  run's data (synthetic, 10 classes)."""
  return shrunk_config("eval/finetune.py", "vit_base", checkpoint_every_steps=100,
                       pretrained=str(pretrain_dir))


def checkpointed_params(workdir, step):
  """The params of `workdir`'s checkpoint `step`, read without a target structure."""
  import orbax.checkpoint as ocp
  path = workdir / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.resolve())["params"]


def test_finetune_starts_from_the_pretrained_encoder_writes_metrics_and_resumes(
    tmp_path, pretrain_dir, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  config = tiny_finetune_config(pretrain_dir)
  resolved = downstream.resolve_config(config)
  assert resolved.data.image_size == 16 and resolved.model.width == 32
  assert resolved.data.num_classes == 10 and tuple(resolved.data.crop_scale) == (0.08, 1.0)
  assert resolved.model.drop_path_rate == pytest.approx(0.1)

  workdir = tmp_path / "finetune"
  assert run.train_on_encoder(config, str(workdir), finetune.FineTune,
                              stop_after_step=1) is None
  assert any(r.getMessage().startswith("Fine-tuning: 4 steps") for r in caplog.records)
  assert not any("Pretraining" in r.getMessage() for r in caplog.records)
  assert checkpoint_steps(workdir) == [1]
  assert not (workdir / downstream.METRICS_FILE).exists()
  # The warmup's lr is 0 at the first step, so after it the params are still the start:
  # the pretrained encoder (its final norm replaced by fc_norm) and a small fresh head.
  start = checkpointed_params(workdir, 1)
  _, encoder_params, _ = pretrained.load_encoder(str(pretrain_dir))
  assert set(encoder_params) - set(start["encoder"]) == {"norm"}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               start["encoder"], {k: v for k, v in encoder_params.items() if k != "norm"})
  head = np.asarray(start["head"]["kernel"])
  assert 0 < np.abs(head).max() < 1e-4 and not np.asarray(start["head"]["bias"]).any()

  metrics = run.train_on_encoder(config, str(workdir), finetune.FineTune)
  assert metrics["step"] == 4 and 0.0 <= metrics["top1"] <= 100.0
  assert json.loads((workdir / downstream.METRICS_FILE).read_text()) == metrics
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
    run.train_on_encoder(config, str(tmp_path / "a"), finetune.FineTune)
  config = tiny_finetune_config(pretrain_dir)
  config.pool = "max"
  with pytest.raises(ValueError, match="config.pool"):
    run.train_on_encoder(config, str(tmp_path / "b"), finetune.FineTune)
  config = tiny_finetune_config(pretrain_dir)
  config.eval_batch_size = 12
  with pytest.raises(ValueError, match="config.eval_batch_size"):
    run.train_on_encoder(config, str(tmp_path / "c"), finetune.FineTune)
  (tmp_path / "no_checkpoints").mkdir()
  shutil.copy(os.path.join(pretrain_dir, "config.json"), tmp_path / "no_checkpoints")
  config = tiny_finetune_config(str(tmp_path / "no_checkpoints"))
  with pytest.raises(FileNotFoundError, match="config.pretrained=.* has no checkpoints"):
    run.train_on_encoder(config, str(tmp_path / "d"), finetune.FineTune)
  assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written
