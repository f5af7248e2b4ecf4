"""mim_jax/convert/posemb.py: resampling absolute position embeddings (torch's bicubic) and
relative position bias tables."""
import numpy as np
import pytest

from mim_jax.convert import posemb
from official_models import max_diff


def test_abs_pos_embed_resampling():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 1 + 9, 4)).astype(np.float32)
  assert posemb.resample_abs_pos_embed(pe, (3, 3)) is pe  # same grid: unchanged
  out = posemb.resample_abs_pos_embed(pe, (5, 2))
  assert out.shape == (1, 1 + 10, 4)
  np.testing.assert_array_equal(out[:, :1], pe[:, :1])  # cls row kept
  # By hand: torch bicubic (A = -0.75, align_corners=False) of [0, 1] to 4 samples; the
  # first output sits at source -0.25, taps clamped: weights (1.10546875, -0.10546875).
  np.testing.assert_allclose(posemb.bicubic_matrix(2, 4)[:, 1],
                             [-0.10546875, 0.2265625, 0.7734375, 1.10546875])
  const = np.concatenate([np.zeros((1, 1, 4)), np.full((1, 4, 4), 2.5)], axis=1)
  np.testing.assert_allclose(posemb.resample_abs_pos_embed(const, (7, 7))[0, 1:], 2.5)
  torch = pytest.importorskip("torch")
  grid = torch.from_numpy(pe[:, 1:]).reshape(1, 3, 3, 4).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(5, 2), mode="bicubic", align_corners=False)
  assert max_diff(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 10, 4).numpy()) < 1e-5


def test_rel_pos_bias_table_resizing():
  table = np.random.default_rng(0).normal(size=(7 * 7 + 3, 2))
  assert posemb.resize_rel_pos_bias_table(table, (4, 4), (4, 4)) is table
  # SimMIM's remap places the 7 offsets of a 4x4 grid at ±1, ±(1 + q), ±(1 + q + q²)
  # with 1 + q + q² = 4 for a 5x5 target (offsets -4..4): q = (√13 − 1)/2.
  q = (np.sqrt(13.0) - 1) / 2
  pos = posemb.geometric_positions(7, 9)
  np.testing.assert_allclose(pos, [-4, -(1 + q), -1, 0, 1, 1 + q, 4], atol=1e-5)
  # A cubic spline reproduces a bilinear function of the placed positions exactly.
  def f(r, c):
    return 0.3 * r - 0.7 * c + 0.1 * r * c
  grid = f(pos[:, None], pos[None, :]).reshape(-1, 1)
  table = np.concatenate([grid, [[7.0], [8.0], [9.0]]])
  out = posemb.resize_rel_pos_bias_table(table, (4, 4), (5, 5))
  offsets = np.arange(-4, 5.0)
  assert out.shape == (9 * 9 + 3, 1)
  np.testing.assert_allclose(out[:-3, 0], f(offsets[:, None], offsets[None, :]).reshape(-1),
                             atol=1e-4)
  np.testing.assert_array_equal(out[-3:, 0], [7.0, 8.0, 9.0])
