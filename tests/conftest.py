"""Tests run on the CPU with 8 fake devices (set before jax is imported)."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import runpy  # noqa: E402

import pytest  # noqa: E402

from mim_jax.evaluation.pretrained import checkpoint_steps  # noqa: E402,F401
from mim_jax.events import event_tags, scalar_series  # noqa: E402,F401

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10_small.npz"


def config_file(name, arg=None, overrides=None):
  """configs/<name>'s get_config(arg), with flattened `overrides` ({'model.width': 32})."""
  get_config = runpy.run_path(str(REPO / "configs" / name))["get_config"]
  config = get_config() if arg is None else get_config(arg)
  config.update_from_flattened_dict(overrides or {})
  return config


def tiny_mae_config(**overrides):
  """MAE on 16 px synthetic images with a 2-block, 32-wide encoder: compiles in seconds."""
  from mim_jax import defaults
  config = defaults.base_config()
  config.data.source = "synthetic"
  config.data.image_size = 16
  config.data.synthetic_train_size = 256
  config.data.synthetic_eval_size = 64
  config.model = defaults.vit_model_config("tiny", patch_size=4)
  config.model.update(width=32, depth=2, num_heads=4, decoder_width=16, decoder_depth=1,
                      decoder_num_heads=2)
  config.batch_size = 16
  config.num_train_steps = 4
  config.warmup_steps = 1
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.image_summary_every_steps = 2
  config.num_summary_images = 2
  config.sharding.fsdp_min_size = 64
  config.update(overrides)
  return config


@pytest.fixture
def cifar_npz():
  if not CIFAR_NPZ.exists():
    pytest.skip(f"{CIFAR_NPZ} not present")
  return CIFAR_NPZ

