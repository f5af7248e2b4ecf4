"""A decoder that predicts latents at chosen query positions from visible latents.

Latent MIM decodes the target patches (LatentMIM `xvits.py` `CrossDecoder`, or a plain
self-attention decoder for its ablation); PCAE decodes only the positions its teacher kept
(caddyless/PCAE `models_mae.py` `forward_decoder`). Both are this module:
Linear(enc→dec) on the encoder output; one learned mask token per query plus its decoder
sin-cos position embedding, optionally plus a "visual cue" (a position-weighted average of
the visible latents); then either
  self-attention blocks over [cls, visible, queries] (MAE-style), or
  cross blocks (self-attention among [cls query, queries] → cross-attention to
  [cls, visible] → MLP);
LayerNorm and Linear(dec→out_dim) on the queries.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import (LN_EPS, Attention, Mlp, block_stack, maybe_remat, sincos_2d,
                                token_init, xavier_uniform)

Dtype = Any


def visual_cues(pos_q: jax.Array, pos_k: jax.Array, values: jax.Array) -> jax.Array:
  """softmax(P_Q·P_Kᵀ/√d)·V (LatentMIM `vits.py` `CrossPositionAttentionStem`).

  pos_q [B, Q, D], pos_k [B, K, D] position embeddings; values [B, K, D] -> [B, Q, D].
  """
  logits = jnp.einsum("bqd,bkd->bqk", pos_q, pos_k) / jnp.sqrt(pos_q.shape[-1])  # [B, Q, K]
  return jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(logits, axis=-1), values)


class CrossBlock(nn.Module):
  """q + SA(LN(q)); q + CA(LN(q), LN(kv)); q + MLP(LN(q)) (LatentMIM `xvits.py`
  `CrossBlock`)."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q, kv):
    norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=name)
    q = q + Attention(self.num_heads, dtype=self.dtype, name="self_attn")(norm("norm1")(q))
    q = q + Attention(self.num_heads, dtype=self.dtype, name="cross_attn")(
        norm("norm2q")(q), context=norm("norm2kv")(kv))
    hidden = int(q.shape[-1] * self.mlp_ratio)
    return q + Mlp(hidden, dtype=self.dtype, name="mlp")(norm("norm3")(q))


class QueryDecoder(nn.Module):
  """`cross_attention`: cross blocks (Latent MIM) instead of self-attention blocks
  (MAE/PCAE). `visual_cues`: add the position-weighted visible latents to each query.
  `mask_token_std`: 0 initialises the mask token to zeros (Latent MIM), else
  normal(std) (MAE/PCAE: 0.02)."""
  grid_hw: Sequence[int]
  out_dim: int
  width: int = 512
  depth: int = 3
  num_heads: int = 16
  mlp_ratio: float = 4.0
  cross_attention: bool = True
  visual_cues: bool = True
  mask_token_std: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, visible_idx, query_idx):
    """latents [B, 1 + K, D_enc] (cls first), visible_idx [B, K], query_idx [B, Q] of the
    grid positions -> predictions [B, Q, out_dim]."""
    b, nq = query_idx.shape
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=xavier_uniform,
                 name="decoder_embed")(latents)  # [B, 1 + K, W]
    pos = jnp.asarray(sincos_2d(self.width, self.grid_hw), x.dtype)  # [N, W]
    pos_v, pos_q = pos[visible_idx], pos[query_idx]  # [B, K, W], [B, Q, W]
    init = (nn.initializers.normal(self.mask_token_std) if self.mask_token_std > 0
            else nn.initializers.zeros)
    mask_token = self.param("mask_token", init, (1, 1, self.width))
    q = jnp.broadcast_to(mask_token.astype(x.dtype), (b, nq, self.width))  # [B, Q, W]
    if self.visual_cues:
      q = q + visual_cues(pos_q, pos_v, x[:, 1:])
    q = q + pos_q
    x = jnp.concatenate([x[:, :1], x[:, 1:] + pos_v], axis=1)  # cls: zero position embedding
    if self.cross_attention:
      cls = self.param("cls_token", token_init, (1, 1, self.width))
      q = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width)), q],
                          axis=1)  # [B, 1 + Q, W]
      block_cls = maybe_remat(CrossBlock, self.remat)
      for i in range(self.depth):
        q = block_cls(self.num_heads, self.mlp_ratio, self.dtype,
                      name=f"decoder_blocks_{i}")(q, x)
    else:
      q = jnp.concatenate([x, q], axis=1)  # [B, 1 + K + Q, W]
      for blk in block_stack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                             self.remat, name_prefix="decoder_blocks"):
        q = blk(q, True)
    q = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="decoder_norm")(q[:, -nq:])
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=xavier_uniform,
                    name="decoder_pred")(q)  # [B, Q, out_dim]
