import math
import random

import jax
import numpy as np
import pytest

from mim_jax import masking


@pytest.mark.parametrize("n,ratio", [(196, 0.75), (64, 0.75), (49, 0.6), (16, 0.9)])
def test_random_masking_hides_exactly_n_minus_keep(n, ratio):
  mask = np.asarray(masking.random_masking(jax.random.PRNGKey(0), 32, n, ratio))
  keep = int(n * (1 - ratio))
  assert mask.shape == (32, n)
  np.testing.assert_array_equal(mask.sum(axis=1), n - keep)
  assert set(np.unique(mask)) <= {0.0, 1.0}


def test_random_masking_is_per_sample_and_a_pure_function_of_the_key():
  a = masking.random_masking(jax.random.PRNGKey(3), 8, 196, 0.75)
  b = masking.random_masking(jax.random.PRNGKey(3), 8, 196, 0.75)
  c = masking.random_masking(jax.random.PRNGKey(4), 8, 196, 0.75)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({tuple(row) for row in np.asarray(a)}) == 8  # samples differ


def test_random_masking_is_uniform_over_positions():
  mask = np.asarray(masking.random_masking(jax.random.PRNGKey(0), 4000, 16, 0.75))
  np.testing.assert_allclose(mask.mean(axis=0), 0.75, atol=0.03)


def test_mask_to_indices_on_a_hand_made_mask():
  mask = np.array([[1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 1, 0]], np.float32)
  visible, hidden, restore = (np.asarray(a) for a in masking.mask_to_indices(mask, 2))
  np.testing.assert_array_equal(visible, [[1, 3], [0, 5]])
  np.testing.assert_array_equal(hidden, [[0, 2, 4, 5], [1, 2, 3, 4]])
  # restore[b, pos] = index of pos in [visible..., hidden...]
  np.testing.assert_array_equal(restore, [[2, 0, 3, 1, 4, 5], [0, 2, 3, 4, 5, 1]])


@pytest.mark.parametrize("image,cell,patch,ratio,cells_hidden", [
    (224, 32, 16, 0.6, 30), (192, 32, 4, 0.6, 22), (32, 8, 4, 0.6, 10), (32, 16, 4, 0.5, 2)])
def test_grid_masks_hide_whole_cells_in_exact_numbers(image, cell, patch, ratio,
                                                      cells_hidden):
  side, scale = image // cell, cell // patch
  assert cells_hidden == math.ceil(side * side * ratio)
  mask = np.asarray(masking.simmim_masking(jax.random.PRNGKey(0), 300, image, cell, patch,
                                           ratio))
  assert mask.shape == (300, (image // patch) ** 2)
  np.testing.assert_array_equal(mask.sum(axis=1), cells_hidden * scale * scale)
  # each cell is a scale×scale square of patches that are all hidden or all visible
  grid = mask.reshape(300, side, scale, side, scale)
  cell_values = grid[:, :, :1, :, :1]
  np.testing.assert_array_equal(grid, np.broadcast_to(cell_values, grid.shape))
  np.testing.assert_array_equal(cell_values.sum(axis=(1, 2, 3, 4)), cells_hidden)


def test_grid_masks_are_uniform_per_sample_and_a_pure_function_of_the_key():
  mask = np.asarray(masking.simmim_masking(jax.random.PRNGKey(1), 4000, 32, 8, 4, 0.6))
  cells = mask.reshape(4000, 4, 2, 4, 2)[:, :, 0, :, 0].reshape(4000, 16)
  np.testing.assert_allclose(cells.mean(axis=0), 10 / 16, atol=0.03)
  again = masking.simmim_masking(jax.random.PRNGKey(1), 4000, 32, 8, 4, 0.6)
  np.testing.assert_array_equal(mask, again)
  assert len({tuple(row) for row in mask[:50]}) > 40
  with pytest.raises(ValueError, match="mask_patch_size"):
    masking.simmim_masking(jax.random.PRNGKey(1), 2, 32, 12, 4, 0.6)


def official_block_mask(rng, height, width, num_masking, min_num=16, min_aspect=0.3):
  """Atten4Vis/CAE furnace/masking_generator.py `MaskingGenerator.__call__`, in NumPy."""
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  mask = np.zeros((height, width), np.int8)
  while mask.sum() != num_masking:
    max_mask = num_masking - mask.sum()
    for _ in range(10):
      area = rng.uniform(min_num, max_mask)
      aspect = math.exp(rng.uniform(*log_aspect))
      h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if w < width and h < height:
        top, left = rng.randint(0, height - h), rng.randint(0, width - w)
        new = h * w - mask[top:top + h, left:left + w].sum()
        if 0 < new <= max_mask:
          mask[top:top + h, left:left + w] = 1
          break
  return mask.reshape(-1)


@pytest.mark.parametrize("grid,num,min_num", [((14, 14), 98, 16), ((8, 8), 32, 16),
                                              ((6, 10), 25, 16), ((4, 4), 6, 4)])
def test_block_masks_hide_exactly_num_masking_patches(grid, num, min_num):
  mask = np.asarray(masking.block_masking(jax.random.PRNGKey(0), 300, grid, num,
                                          min_num_patches=min_num))
  assert mask.shape == (300, grid[0] * grid[1])
  assert set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(mask.sum(axis=1), num)
  assert len({tuple(row) for row in mask}) > 30  # per sample


def test_block_shapes_stay_in_bounds_and_follow_the_official_formula():
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)
  top, left, h, w = (np.asarray(a) for a in jax.vmap(
      lambda k: masking.sample_block(k, (14, 14), 98.0, 16, 0.3, 1 / 0.3))(keys))
  # area ∈ [16, 98] and aspect h/w ∈ [0.3, 1/0.3] up to rounding h and w to integers
  assert ((h + 0.5) * (w + 0.5) >= 16).all() and ((h - 0.5) * (w - 0.5) <= 98).all()
  assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 1 / 0.3).all()
  fits = (h < 14) & (w < 14)
  assert ((top >= 0) & (top + h <= 14) & (left >= 0) & (left + w <= 14))[fits].all()
  assert set(top[fits & (h == 4)]) == set(range(11))  # every legal row, ends included
  assert set(left[fits & (w == 4)]) == set(range(11))
  # h and w are distributed as round(√(area·r)), round(√(area/r)) of the official draws
  rng = np.random.default_rng(1)
  area, aspect = rng.uniform(16, 98, 20000), np.exp(rng.uniform(math.log(0.3),
                                                                -math.log(0.3), 20000))
  ref_h, ref_w = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
  for ours, ref in ((h, ref_h), (w, ref_w)):
    bins = np.arange(0, 25)
    tv = 0.5 * np.abs(np.histogram(ours, bins)[0] - np.histogram(ref, bins)[0]).sum() / 20000
    assert tv < 0.04, tv
  assert abs(fits.mean() - ((ref_h < 14) & (ref_w < 14)).mean()) < 0.02


def test_block_masks_match_the_official_generator_statistics():
  """Where blocks land (corners rarely, the centre often) matches the official loop."""
  draw = jax.jit(lambda key: masking.block_masking(key, 500, (14, 14), 98))
  ours = np.asarray(draw(jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(ours, draw(jax.random.PRNGKey(2)))  # a function of the key
  rng = random.Random(0)
  ref = np.stack([official_block_mask(rng, 14, 14, 98) for _ in range(500)])
  regions = np.zeros((14, 14), int)  # 0 centre 6×6, 1 border ring, 2 corners 3×3, 3 rest
  regions[:, :] = 3
  regions[4:10, 4:10] = 0
  regions[[0, -1], :] = regions[:, [0, -1]] = 1
  for r in (slice(0, 3), slice(11, 14)):
    for c in (slice(0, 3), slice(11, 14)):
      regions[r, c] = 2
  for region in range(4):
    cells = regions.reshape(-1) == region
    assert abs(ours[:, cells].mean() - ref[:, cells].mean()) < 0.04, region
