"""Pretraining methods by name (`config.method.name`)."""
from mim_jax.methods.base import Method
from mim_jax.methods.mae import MAE

METHODS = {"mae": MAE}


def create(config) -> Method:
  name = config.method.name
  if name not in METHODS:
    raise ValueError(f"Unknown config.method.name={name!r}; choose one of {sorted(METHODS)}.")
  return METHODS[name](config)
