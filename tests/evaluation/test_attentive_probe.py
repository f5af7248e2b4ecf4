"""mim_jax/evaluation/attentive_probe.py: the learned query finds the informative token."""
import numpy as np
import pytest

from mim_jax.evaluation import attentive_probe


def test_attentive_probe_finds_the_one_informative_token():
  # Each example: 8 noise tokens and, at a random position, a marker plus its class's
  # prototype; the query must learn to attend to the marked token.
  rng = np.random.default_rng(3)
  marker, prototypes = rng.normal(size=16) * 2, rng.normal(size=(4, 16)) * 2

  def make(n):
    labels = rng.integers(0, 4, n)
    tokens = rng.normal(size=(n, 9, 16))
    tokens[np.arange(n), rng.integers(1, 9, n)] = marker + prototypes[labels]
    return tokens.astype(np.float32), labels

  (train_x, train_y), (test_x, test_y) = make(512), make(256)
  result = attentive_probe.train_attentive_probe(
      train_x, train_y, test_x, test_y, num_classes=4, epochs=20, batch_size=64,
      num_heads=2, warmup_epochs=1)
  assert result["top1"] >= 90.0
  with pytest.raises(ValueError, match="pool='tokens'"):
    attentive_probe.train_attentive_probe(train_x[:, 0], train_y, test_x[:, 0], test_y,
                                          num_classes=4, num_heads=2)
