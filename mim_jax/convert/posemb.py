"""Position-embedding resampling for another image size.

- Fixed 2-D sin-cos embeddings (our ViTEncoder's 'sincos', MAE, CAE) are a function of
  the grid: converters drop them and the encoder recomputes them at the new size, which
  is exact; nothing is resampled.
- Learned absolute tables [1, prefix + h*w, D] (timm `pos_embed`): `resample_abs_pos_embed`,
  bicubic on the 2-D grid with the prefix (cls) rows kept, as mae/util/pos_embed.py
  `interpolate_pos_embed` and timm `resample_abs_pos_embed`
  (F.interpolate(mode='bicubic', align_corners=False)).
- BEiT/SimMIM relative position bias tables [(2h−1)(2w−1) + 3, H]:
  `resize_rel_pos_bias_table`, the geometric-progression cubic-spline remap of SimMIM
  utils.py `remap_pretrained_keys_vit` (from BEiT), the three cls entries kept.
"""
import math
from typing import Sequence

import numpy as np

BICUBIC_A = -0.75  # torch's upsample_bicubic2d coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Keys cubic convolution weights [..., 4] for taps at −1, 0, 1, 2 of fraction t
  (aten/src/ATen/native/UpSample.h `get_cubic_upsample_coefficients`)."""
  a = BICUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of torch's 1-D bicubic resize (align_corners=False, no antialias,
  border taps clamped)."""
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  start = np.floor(src)
  weights = _cubic_weights(src - start)  # [out, 4]
  taps = np.clip(start[:, None].astype(int) + np.arange(-1, 3), 0, in_size - 1)  # [out, 4]
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.reshape(-1)), weights.reshape(-1))
  return matrix


def resample_abs_pos_embed(pos_embed: np.ndarray, new_grid_hw: Sequence[int],
                           old_grid_hw: Sequence[int] = None,
                           num_prefix_tokens: int = 1) -> np.ndarray:
  """[1, prefix + h*w, D] -> [1, prefix + h'*w', D]: the grid rows resized bicubically
  (torch F.interpolate(mode='bicubic', align_corners=False) without antialiasing, as
  MAE's `interpolate_pos_embed`), the prefix rows unchanged. `old_grid_hw` defaults to
  the square grid of the table."""
  pos_embed = np.asarray(pos_embed)
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  n, d = grid.shape[1:]
  if old_grid_hw is None:
    side = math.isqrt(n)
    if side * side != n:
      raise ValueError(f"pos_embed has {n} grid positions, not a square grid: pass "
                       "old_grid_hw.")
    old_grid_hw = (side, side)
  (h, w), (nh, nw) = old_grid_hw, new_grid_hw
  if h * w != n:
    raise ValueError(f"pos_embed has {n} grid positions, not {h}x{w}.")
  if (h, w) == (nh, nw):
    return pos_embed
  table = grid.reshape(h, w, d).astype(np.float64)
  table = np.einsum("ih,jw,hwd->ijd", bicubic_matrix(h, nh), bicubic_matrix(w, nw), table)
  return np.concatenate([prefix, table.reshape(1, nh * nw, d).astype(pos_embed.dtype)], axis=1)


def geometric_positions(src_side: int, dst_side: int) -> np.ndarray:
  """Positions of a table's `src_side` (odd) relative offsets on the target's integer
  offset axis: spacing growing geometrically from the centre so that the outermost lands
  near ±(dst_side // 2) (BEiT / SimMIM utils.py `remap_pretrained_keys_vit`)."""
  half = src_side // 2

  def progression(r):
    return (1.0 - r ** half) / (1.0 - r)

  left, right = 1.01, 1.5
  while right - left > 1e-6:
    q = (left + right) / 2.0
    if progression(q) > dst_side // 2:
      right = q
    else:
      left = q
  dis, cur = [], 1.0
  for i in range(half):
    dis.append(cur)
    cur += q ** (i + 1)
  return np.array([-d for d in reversed(dis)] + [0.0] + dis)


def resize_rel_pos_bias_table(table: np.ndarray, old_grid_hw: Sequence[int],
                              new_grid_hw: Sequence[int]) -> np.ndarray:
  """[(2h−1)(2w−1) + 3, H] -> [(2h'−1)(2w'−1) + 3, H] as SimMIM/BEiT fine-tuning does:
  per head, the (2h−1)×(2w−1) offset grid is placed at `geometric_positions` and an
  interpolating bicubic spline (scipy interp2d kind='cubic', i.e. RectBivariateSpline
  with s=0) is read at the integer offsets of the new grid; the cls→token, token→cls,
  cls→cls entries are kept. Square grids only, as the official code."""
  from scipy.interpolate import RectBivariateSpline
  (h, w), (nh, nw) = old_grid_hw, new_grid_hw
  table = np.asarray(table)
  src, dst = 2 * h - 1, 2 * nh - 1
  if table.shape[0] != src * (2 * w - 1) + 3:
    raise ValueError(f"relative_position_bias_table has {table.shape[0]} rows; a {h}x{w} grid "
                     f"has {src * (2 * w - 1) + 3}.")
  if (h, w) == (nh, nw):
    return table
  if h != w or nh != nw:
    raise ValueError(f"Resizing the relative position bias from {h}x{w} to {nh}x{nw}: only "
                     "square grids are supported (as SimMIM/BEiT).")
  pos = geometric_positions(src, dst)
  t = dst // 2
  target = np.arange(-t, t + 0.1, 1.0)
  grid = table[:-3].astype(np.float64)
  heads = [RectBivariateSpline(pos, pos, grid[:, k].reshape(src, src), kx=3, ky=3, s=0)(
      target, target).reshape(-1) for k in range(table.shape[1])]
  resized = np.stack(heads, axis=-1).astype(table.dtype)
  return np.concatenate([resized, table[-3:]], axis=0)
