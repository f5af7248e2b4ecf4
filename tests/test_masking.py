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
