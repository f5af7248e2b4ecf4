"""Decoders that turn encoder latents back into per-patch predictions."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import LN_EPS, block_stack, sincos_2d, token_init, xavier_uniform

Dtype = Any


def restore_order(visible_tokens: jax.Array, fill_token: jax.Array,
                  restore_idx: jax.Array) -> jax.Array:
  """Scatter K visible tokens back to their N grid positions, `fill_token` elsewhere.

  `restore_idx` [B, N] gives, for each position, its index in the sequence
  [visible tokens..., fill tokens...] (mae/models_mae.py `ids_restore`).
  """
  b, k, d = visible_tokens.shape
  n = restore_idx.shape[1]
  fill = jnp.broadcast_to(fill_token.astype(visible_tokens.dtype), (b, n - k, d))
  x = jnp.concatenate([visible_tokens, fill], axis=1)  # [B, N, D]
  return jnp.take_along_axis(x, restore_idx[..., None], axis=1)  # [B, N, D]


class MAEDecoder(nn.Module):
  """MAE decoder (mae/models_mae.py `forward_decoder`).

  Linear(enc→dec) on the encoder output, one learned mask token at every hidden
  position, decoder sin-cos position embedding, `depth` pre-LN blocks, LayerNorm, and a
  Linear to `out_dim` per token (p²·3 pixels for MAE). The cls token is dropped.
  """
  grid_hw: Sequence[int]
  out_dim: int
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_ratio: float = 4.0
  remat: Any = False  # vit.REMAT_POLICIES name or bool
  dtype: Dtype = jnp.float32
  scan_layers: bool = False
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, latents, restore_idx, deterministic: bool = True):
    """latents [B, 1 + K, D_enc] (cls first), restore_idx [B, N] -> [B, N, out_dim]."""
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=xavier_uniform,
                 name="decoder_embed")(latents)  # [B, 1 + K, Dd]
    mask_token = self.param("mask_token", token_init, (1, 1, self.width))
    patches = restore_order(x[:, 1:], mask_token, restore_idx)  # [B, N, Dd]
    pos = sincos_2d(self.width, self.grid_hw)  # [N, Dd]
    x = jnp.concatenate([x[:, :1], patches + pos.astype(x.dtype)], axis=1)  # [B, 1 + N, Dd]
    for blk in block_stack(self.depth, self.num_heads, self.mlp_ratio, self.dtype, self.remat,
                           name_prefix="decoder_blocks", scan=self.scan_layers,
                           attention_impl=self.attention_impl):
      x = blk(x, deterministic)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="decoder_norm")(x)
    x = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=xavier_uniform,
                 name="decoder_pred")(x)  # [B, 1 + N, out_dim]
    return x[:, 1:]  # [B, N, out_dim]
