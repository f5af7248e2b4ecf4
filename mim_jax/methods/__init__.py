"""Pretraining methods by name (`config.method.name`)."""
from mim_jax.methods.base import Method
from mim_jax.methods.cae import CAE
from mim_jax.methods.latent_mim import LatentMIM
from mim_jax.methods.mae import MAE
from mim_jax.methods.multiview_mae import MultiViewMAE
from mim_jax.methods.pcae import PCAE
from mim_jax.methods.simmim import SimMIM

METHODS = {"mae": MAE, "latent_mim": LatentMIM, "pcae": PCAE, "multiview_mae": MultiViewMAE,
           "simmim": SimMIM, "cae": CAE}


def create(config) -> Method:
  name = config.method.name
  if name not in METHODS:
    raise ValueError(f"Unknown config.method.name={name!r}; choose one of {sorted(METHODS)}.")
  return METHODS[name](config)
