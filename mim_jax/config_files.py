"""Experiment config files (configs/<name>.py with `get_config([arg])`) read from a spec
`path[:arg]`, as `--config=` of mim_jax.main reads them (ml_collections.config_flags)."""
import os
import runpy

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the file in `spec` = 'path[:arg]' (`get_config()` without arg)."""
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} not found (from {spec!r}): give a path "
                            "like configs/mae_vit_base.py[:variant], relative to the "
                            "working directory.")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(arg) if sep else get_config()
