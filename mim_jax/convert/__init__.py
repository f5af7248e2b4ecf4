"""Converters from published PyTorch checkpoints to `mim_jax` parameter trees."""
from mim_jax.convert.mae import (load_torch_state_dict, mae_encoder_from_torch, mae_from_torch,
                                 vit_dims_from_torch)

__all__ = ["load_torch_state_dict", "mae_encoder_from_torch", "mae_from_torch",
           "vit_dims_from_torch"]
