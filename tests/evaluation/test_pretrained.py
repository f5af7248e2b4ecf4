"""mim_jax/evaluation/pretrained.py: reading a pretraining run back."""
import pytest

from conftest import tiny_mae_config
from mim_jax.evaluation import pretrained


def test_reading_a_workdir_without_checkpoints_says_so(tmp_path):
  config = tiny_mae_config()
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="No checkpoint under"):
    pretrained.restore_state(str(tmp_path))
