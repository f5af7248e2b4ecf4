"""Converters between published PyTorch checkpoints, timm and `mim_jax` parameter trees
(command line: `python -m mim_jax.convert`, see __main__.py)."""
from mim_jax.convert.cae import cae_channel_permutation, cae_dims_from_torch, cae_encoder_from_torch
from mim_jax.convert.common import encoder_kwargs, load_torch_state_dict, save_state_dict
from mim_jax.convert.mae import mae_encoder_from_torch, mae_from_torch, vit_dims_from_torch
from mim_jax.convert.posemb import resample_abs_pos_embed, resize_rel_pos_bias_table
from mim_jax.convert.simmim import (simmim_dims_from_torch, simmim_encoder_from_torch,
                                    simmim_from_torch, simmim_head_from_torch)
from mim_jax.convert.timm import encoder_from_timm, encoder_to_timm, timm_dims

__all__ = ["load_torch_state_dict", "save_state_dict", "encoder_kwargs", "vit_dims_from_torch",
           "mae_encoder_from_torch", "mae_from_torch", "cae_dims_from_torch",
           "cae_encoder_from_torch", "cae_channel_permutation", "simmim_dims_from_torch",
           "simmim_encoder_from_torch", "simmim_head_from_torch", "simmim_from_torch",
           "encoder_to_timm", "encoder_from_timm", "timm_dims", "resample_abs_pos_embed",
           "resize_rel_pos_bias_table"]
