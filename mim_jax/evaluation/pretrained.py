"""The encoder of a pretraining run, rebuilt from its workdir for evaluation."""
from typing import Any, Optional, Tuple

import ml_collections

from mim_jax import train
from mim_jax.methods.mae import build_encoder
from mim_jax.models import vit


def load_encoder(workdir: str, *, image_size: Optional[int] = None,
                 step: Optional[int] = None, use_target: bool = False,
                 **overrides) -> Tuple[vit.ViTEncoder, Any, ml_collections.ConfigDict]:
  """(encoder, encoder params, pretraining config) from `workdir`'s latest (or `step`)
  checkpoint, on the default device.

  The encoder is the pretraining `config.model` at `image_size` (default: the
  pretraining `data.image_size`; sin-cos position embeddings are recomputed for it);
  `overrides` replace ViTEncoder fields (e.g. drop_path_rate for fine-tuning). SimMIM's
  mask token is dropped: evaluation never hides patches. `use_target` takes the EMA
  target encoder (Latent MIM) instead of the online one.
  """
  config, state = train.restore_state(workdir, step)
  if use_target:
    if state.target_params is None or "encoder" not in state.target_params:
      raise ValueError(f"The run in {workdir} (method {config.method.name!r}) keeps no "
                       "target encoder: set use_target=False.")
    params = state.target_params["encoder"]
  else:
    params = state.params["encoder"]
  params = {k: v for k, v in params.items() if k != "mask_token"}
  size = config.data.image_size if image_size is None else image_size
  encoder = build_encoder(config, image_size=size, use_mask_token=False, **overrides)
  return encoder, params, config
