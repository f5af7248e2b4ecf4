"""The encoder of a pretraining run, rebuilt from its workdir for evaluation."""
from typing import Any, List, Optional, Tuple

import ml_collections

from mim_jax import checkpoint, train
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
  params = vit.without_mask_token(params)
  size = config.data.image_size if image_size is None else image_size
  encoder = build_encoder(config, image_size=size, use_mask_token=False, **overrides)
  return encoder, params, config


def read_pretrain_config(workdir) -> ml_collections.ConfigDict:
  """The pretraining config of `workdir`, or an error naming config.pretrained."""
  if not workdir:
    raise ValueError("Set config.pretrained to the workdir of a pretraining run "
                     "(--config.pretrained=DIR).")
  try:
    return checkpoint.read_config(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.pretrained={workdir!r} is not a pretraining workdir: "
                            f"{e}") from None


def checkpoint_steps(workdir: str) -> List[int]:
  """Steps of the finished checkpoints in `workdir` (none: [])."""
  root = checkpoint.workdir_path(workdir) / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit())


def pretrained_step(workdir: str, step: Optional[int]) -> int:
  """`step` (config.pretrained_step), or the newest checkpoint step of `workdir`; an
  error naming the field when the workdir has no such checkpoint."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"config.pretrained={workdir!r} has no checkpoints under "
                            "checkpoints/: point it at a pretraining run that has saved one.")
  if step is not None and step not in steps:
    raise ValueError(f"config.pretrained_step={step} is not among the checkpoint steps "
                     f"{steps} of {workdir}.")
  return steps[-1] if step is None else step
