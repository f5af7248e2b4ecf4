"""mim_jax/evaluation/linear_probe.py: the LARS-trained linear probe on a separable set."""
import numpy as np
import pytest

from mim_jax.evaluation import linear_probe


def separable_set(rng, directions, n, noise):
  """Class c at directions[c] (orthogonal, length 3) plus a shared offset and noise."""
  labels = rng.integers(0, len(directions), n)
  x = directions[labels] + noise * rng.normal(size=(n, directions.shape[1])) + 5.0
  return x.astype(np.float32), labels


def test_linear_probe_learns_a_linearly_separable_set():
  rng = np.random.default_rng(0)
  directions = np.linalg.qr(rng.normal(size=(16, 16)))[0][:4] * 3.0
  train_x, train_y = separable_set(rng, directions, 512, 0.5)
  test_x, test_y = separable_set(rng, directions, 256, 0.5)
  logged = []
  # LARS moves a weight matrix by about lr·0.001/(1 − 0.9) of its norm per step, so 160
  # steps need a far larger lr than ImageNet's 7k steps at lr 0.1·16384/256.
  result = linear_probe.train_linear_probe(
      train_x, train_y, test_x, test_y, num_classes=4, epochs=20, batch_size=64,
      base_lr=16.0, warmup_epochs=2,
      log_fn=lambda epoch, scalars: logged.append((epoch, scalars)))
  assert result["top1"] >= 95.0
  assert result["steps"] == 20 * 8 and result["peak_lr"] == pytest.approx(16.0 * 64 / 256)
  assert [epoch for epoch, _ in logged] == list(range(1, 21))
  assert logged[-1][1]["train_loss"] < logged[0][1]["train_loss"]
