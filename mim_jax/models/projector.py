"""Projection heads placed after an encoder: Latent MIM's MLP projector on every token and
SimCLR's head on a pooled feature (Multi-View MAE's contrastive loss)."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.models.vit import gelu, xavier_uniform

Dtype = Any

# torch nn.LayerNorm's default epsilon, which LatentMIM `_build_mlp` uses.
TORCH_LN_EPS = 1e-5


class MLPProjector(nn.Module):
  """`depth` bias-free Linear layers, LayerNorm + GELU between them and a LayerNorm on the
  output (LatentMIM `models_lmim.py` `_build_mlp(out_norm=True)`); output width = input
  width. Applied to every token."""
  depth: int = 3
  hidden_dim: int = 4096
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    d = x.shape[-1]
    for i in range(self.depth):
      last = i == self.depth - 1
      x = nn.Dense(d if last else self.hidden_dim, use_bias=False, dtype=self.dtype,
                   kernel_init=xavier_uniform, name=f"linear{i}")(x)
      x = nn.LayerNorm(epsilon=TORCH_LN_EPS, dtype=self.dtype, name=f"norm{i}")(x)
      if not last:
        x = gelu(x)
    return x


class SimCLRProjector(nn.Module):
  """SimCLR's projection head (Chen et al. 2020, §2.1): Linear -> ReLU -> Linear."""
  hidden_dim: int
  out_dim: int

  @nn.compact
  def __call__(self, x):  # [B, D] -> [B, out_dim]
    x = nn.Dense(self.hidden_dim, kernel_init=xavier_uniform, name="fc1")(x)
    return nn.Dense(self.out_dim, kernel_init=xavier_uniform, name="fc2")(nn.relu(x))
