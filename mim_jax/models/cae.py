"""CAE's latent context regressor and decoder (Atten4Vis/CAE models/modeling_cae.py,
models/modeling_cae_helper.py). Both work on the hidden patches only; position
embeddings are the fixed 2-D sin-cos ones of the regressor width (`rd_pos_embed`)."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mim_jax.models import vit

Dtype = Any


class RegressorBlock(nn.Module):
  """Cross-attention block (modeling_cae_helper.py `RegressorBlock`):
  x = q + γ1·CA(LN_q(q + pos_q), keys LN_k(kv + pos_kv), values LN_v(kv)); x = LN(x);
  x + γ2·MLP(x). Only the queries are updated."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  layer_scale_init: Optional[float] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv, pos_q, pos_kv, deterministic: bool = True):
    """x_q, pos_q [B, M, D] queries; x_kv, pos_kv [B, K + M, D] -> [B, M, D]."""
    ln = lambda name: nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name=name)
    y = vit.Attention(self.num_heads, dtype=self.dtype, name="cross_attn")(
        ln("norm1_q")(x_q + pos_q), context=ln("norm1_k")(x_kv + pos_kv),
        values=ln("norm1_v")(x_kv))  # [B, M, D]
    y = vit.layer_scale(self, "gamma_1_cross", y, self.layer_scale_init)
    x = ln("norm2_cross")(x_q + vit.DropPath(self.drop_path)(y, deterministic))
    y = vit.Mlp(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp_cross")(x)
    y = vit.layer_scale(self, "gamma_2_cross", y, self.layer_scale_init)
    return x + vit.DropPath(self.drop_path)(y, deterministic)


class LatentRegressor(nn.Module):
  """Predicts the hidden patches' latents from the visible ones (modeling_cae.py
  `ContextAutoencoderViT.forward`, modeling_cae_helper.py `LatentRegresser`).

  Queries start as one learned mask token per hidden patch. Each block cross-attends
  from the queries (+ their positions) to [visible latents, current queries]; the visible
  latents are never updated. Final LayerNorm. When `width` differs from the encoder's,
  latents first pass Linear + LayerNorm (`encoder_to_regresser`, also used by `project`
  on the alignment targets).
  """
  grid_hw: Sequence[int]
  encoder_width: int
  width: int = 768
  depth: int = 4
  num_heads: int = 12
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = 0.1
  remat: Any = False  # vit.REMAT_POLICIES name or bool
  dtype: Dtype = jnp.float32

  def setup(self):
    self.mask_token = self.param("mask_token", vit.token_init, (1, 1, self.width))
    self.pos_embed = vit.sincos_2d(self.width, self.grid_hw)  # [N, D], fixed
    if self.encoder_width != self.width:
      self.encoder_to_regressor = nn.Dense(self.width, dtype=self.dtype,
                                           kernel_init=vit.xavier_uniform)
      self.encoder_to_regressor_norm = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype)
    block_cls = vit.maybe_remat(RegressorBlock, self.remat, static_argnums=(5,))
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    self.blocks = [block_cls(self.num_heads, self.mlp_ratio, float(rates[i]),
                             self.layer_scale_init, self.dtype, name=f"regressor_blocks_{i}")
                   for i in range(self.depth)]
    self.norm = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype)

  def project(self, latents):
    """Encoder latents [B, L, D_enc] -> regressor width [B, L, D]."""
    if self.encoder_width == self.width:
      return latents
    return self.encoder_to_regressor_norm(self.encoder_to_regressor(latents))

  def __call__(self, visible_latents, visible_idx, hidden_idx, deterministic: bool = True):
    """visible_latents [B, K, D_enc] (no cls), visible_idx [B, K], hidden_idx [B, M]
    -> predicted hidden latents [B, M, D]."""
    z = self.project(visible_latents)  # [B, K, D]
    b, m = hidden_idx.shape
    pos_q = jnp.take(self.pos_embed, hidden_idx, axis=0).astype(z.dtype)  # [B, M, D]
    pos_kv = jnp.concatenate(
        [jnp.take(self.pos_embed, visible_idx, axis=0).astype(z.dtype), pos_q], axis=1)
    x = jnp.broadcast_to(self.mask_token.astype(z.dtype), (b, m, self.width))  # [B, M, D]
    for blk in self.blocks:
      x = blk(x, jnp.concatenate([z, x], axis=1), pos_q, pos_kv, deterministic)
    return self.norm(x)


class CAEDecoder(nn.Module):
  """Self-attention blocks over the predicted hidden latents + their positions only,
  LayerNorm, linear head to `out_dim` (modeling_cae_helper.py `Decoder`)."""
  grid_hw: Sequence[int]
  out_dim: int
  depth: int = 4
  num_heads: int = 12
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = 0.1
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, hidden_idx, deterministic: bool = True):
    """latents [B, M, D], hidden_idx [B, M] -> [B, M, out_dim]."""
    pos = vit.sincos_2d(latents.shape[-1], self.grid_hw)  # [N, D]
    x = latents + jnp.take(pos, hidden_idx, axis=0).astype(latents.dtype)  # [B, M, D]
    for blk in vit.block_stack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                               self.remat, self.drop_path_rate, self.layer_scale_init,
                               name_prefix="decoder_blocks"):
      x = blk(x, deterministic)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=vit.xavier_uniform,
                    name="head")(x)  # [B, M, out_dim]
