"""Mask generators: pure functions of an rng key. Masks are [B, N] with 1 = hidden.

Every method draws its masks here and passes them into its loss, so any loss can be
evaluated for a given, explicit mask.
"""
import jax
import jax.numpy as jnp


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Tokens kept by MAE-style masking: int(N·(1 − ratio)) (mae/models_mae.py)."""
  return int(num_patches * (1 - mask_ratio))


def random_masking(key: jax.Array, batch_size: int, num_patches: int,
                   mask_ratio: float) -> jax.Array:
  """Per-sample uniform random masking (MAE): argsort of uniform noise, keep the first
  int(N·(1 − ratio)) positions. Returns float32 [B, N], exactly N − K ones per row."""
  keep = num_visible(num_patches, mask_ratio)
  noise = jax.random.uniform(key, (batch_size, num_patches))  # [B, N]
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # [B, N] rank of each position
  return (rank >= keep).astype(jnp.float32)


def mask_to_indices(mask: jax.Array, num_keep: int):
  """Split positions by a mask with exactly `num_keep` zeros per row.

  Returns (visible_idx [B, K] in ascending position order, hidden_idx [B, N − K] in
  ascending order, restore_idx [B, N]) where restore_idx maps each position to its index
  in the sequence [visible..., hidden...] (mae/models_mae.py `ids_restore`).
  """
  order = jnp.argsort(mask, axis=1, stable=True)  # [B, N] visible first, then hidden
  restore_idx = jnp.argsort(order, axis=1)  # [B, N]
  return order[:, :num_keep], order[:, num_keep:], restore_idx
