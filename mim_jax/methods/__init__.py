"""Pretraining methods by name (`config.method.name`)."""
from typing import Optional

from mim_jax.methods.base import Method
from mim_jax.methods.cae import CAE
from mim_jax.methods.latent_mim import LatentMIM
from mim_jax.methods.mae import MAE
from mim_jax.methods.multiview_mae import MultiViewMAE
from mim_jax.methods.pcae import PCAE
from mim_jax.methods.simmim import SimMIM

METHODS = {"mae": MAE, "latent_mim": LatentMIM, "pcae": PCAE, "multiview_mae": MultiViewMAE,
           "simmim": SimMIM, "cae": CAE}


def create(config, total_steps: Optional[int] = None) -> Method:
  """The method `config.method.name` names, built for a run of `total_steps` optimizer
  steps (None when no loss is computed, e.g. reading a finished run back)."""
  name = config.method.name
  if name not in METHODS:
    raise ValueError(f"Unknown config.method.name={name!r}; choose one of {sorted(METHODS)}.")
  return METHODS[name](config, total_steps)
