"""The command line the step tools share (train_step, profile_step, aot): the config whose
step they compile (--config with its --config.field=value overrides) and the speed options
that override its model (--dtype, --remat, --scan_layers, --attention_impl).

Each of those programs calls `define_config_flags` in its own `define_flags`; the helpers
below read the flags once they are parsed.
"""
import jax
from absl import flags
from ml_collections import config_flags

from mim_jax.tools.compiled_step import step_name, vit_base_config

FLAGS = flags.FLAGS
SPEED_OPTIONS = ("dtype", "remat", "scan_layers", "attention_impl")


def define_config_flags(config_help: str = "One experiment config file.") -> None:
  """--config and the speed options."""
  config_flags.DEFINE_config_file("config", None, config_help)
  flags.DEFINE_string("dtype", None, "Overrides config.model.dtype (float32 | bfloat16).")
  flags.DEFINE_string("remat", None, "Overrides config.model.remat (a policy name).")
  flags.DEFINE_bool("scan_layers", None, "Overrides config.model.scan_layers.")
  flags.DEFINE_string("attention_impl", None, "Overrides config.model.attention_impl.")


def apply_overrides(config, batch_size=None) -> None:
  """The speed options given on the command line, and `batch_size`, onto `config`."""
  if batch_size is not None:
    config.batch_size = batch_size
  for field in SPEED_OPTIONS:
    value = getattr(FLAGS, field)
    if value is not None:
      config.model[field] = value


def method_config(method: str, batch_size: int):
  """configs/<method>.py:vit_base on random images (no dataset needed), at `batch_size`
  with the command-line speed options."""
  config = vit_base_config(method)
  config.data.source = "synthetic"
  apply_overrides(config, batch_size)
  return config


def describe(config) -> str:
  """One line: the step, its model, image, batch and speed options, and the devices."""
  m = config.model
  return (f"method={step_name(config)} width={m.width} depth={m.depth} patch={m.patch_size} "
          f"image={config.data.image_size} batch={config.batch_size} dtype={m.dtype} "
          f"remat={m.get('remat')} scan_layers={m.get('scan_layers')} "
          f"attention_impl={m.get('attention_impl')} devices={jax.device_count()} "
          f"({jax.devices()[0].platform})")
