"""mim_jax/evaluation/mixup.py: mixup, cutmix and label smoothing, and fine-tuning's soft
cross-entropy, by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.evaluation import finetune, mixup


def constant_images(batch, size=16):
  """Image i filled with the value i: where each pixel came from is its value."""
  return jnp.broadcast_to(jnp.arange(batch, dtype=jnp.float32)[:, None, None, None],
                          (batch, size, size, 3))


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_cutmix_lambda_is_the_kept_area(mixup_alpha,
                                                                     cutmix_alpha):
  batch, size, classes = 6, 16, 10
  images = constant_images(batch, size)
  labels = jnp.arange(batch) % classes
  fn = jax.jit(lambda key: mixup.mixup_cutmix(
      key, images, labels, num_classes=classes, mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha, smoothing=0.1))
  kinds = set()
  for seed in range(12):
    mixed, targets, lam = jax.device_get(fn(jax.random.PRNGKey(seed)))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert 0.0 <= lam <= 1.0
    own = np.isclose(mixed, np.arange(batch)[:, None, None, None])
    partner = np.isclose(mixed, np.arange(batch)[::-1, None, None, None])
    if own.all(axis=(1, 2, 3)).all() and lam == 1.0:
      continue  # nothing mixed
    if (own | partner).all():  # cutmix: every pixel is its own or its partner's
      kinds.add("cutmix")
      np.testing.assert_allclose(partner[..., 0].mean(axis=(1, 2)), 1.0 - lam, atol=1e-6)
    else:
      kinds.add("mixup")
      np.testing.assert_allclose(mixed, lam * np.asarray(images)
                                 + (1 - lam) * np.asarray(images)[::-1], rtol=1e-5)
    expected = (lam * mixup.smooth_one_hot(labels, classes, 0.1)
                + (1 - lam) * mixup.smooth_one_hot(labels[::-1], classes, 0.1))
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
  assert kinds == ({"mixup"} if cutmix_alpha == 0 else {"cutmix"} if mixup_alpha == 0
                   else {"mixup", "cutmix"})


def test_label_smoothing_and_soft_cross_entropy_by_hand():
  # 4 classes, s = 0.1: on = 1 - 0.1 + 0.025 = 0.925, off = 0.025
  y = np.asarray(mixup.smooth_one_hot(jnp.array([0, 2]), 4, 0.1))
  np.testing.assert_allclose(y, [[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]],
                             rtol=1e-6)
  # λ = 0.7 mixes example 0 with example 1: 0.7·0.925 + 0.3·0.025 = 0.655, 0.7·0.025 +
  # 0.3·0.925 = 0.295
  t = np.asarray(mixup.mix_targets(jnp.array([0, 2]), 4, 0.7, 0.1))
  np.testing.assert_allclose(t[0], [0.655, 0.025, 0.295, 0.025], rtol=1e-6)
  np.testing.assert_allclose(t[1], [0.295, 0.025, 0.655, 0.025], rtol=1e-6)
  # uniform logits: log 4 whatever the target; one-hot target: −log softmax at the label
  assert float(finetune.soft_cross_entropy(jnp.zeros((2, 4)), t)) == pytest.approx(np.log(4))
  logits = jnp.array([[2.0, 0.0, 0.0, 0.0]])
  expected = -(2.0 - np.log(np.exp(2.0) + 3.0))
  assert float(finetune.soft_cross_entropy(logits, jnp.eye(4)[:1])) == pytest.approx(expected)
