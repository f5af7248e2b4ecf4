"""mim_jax/evaluation/knn.py: weighted k-NN (k = 20, T = 0.07) and 1-NN on cosine
similarity, by hand."""
import math

import numpy as np
import pytest

from mim_jax.evaluation import knn


def unit(angle_degrees):
  """2-D unit vector at `angle_degrees`: its cosine with (1, 0) is cos(angle)."""
  a = math.radians(angle_degrees)
  return [math.cos(a), math.sin(a)]


def at_similarity(s):
  return unit(math.degrees(math.acos(s)))


def test_knn_is_perfect_on_separable_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 16)) * 4
  make = lambda n: (lambda y: (centres[y] + rng.normal(size=(n, 16)), y))(
      rng.integers(0, 5, n))
  train_x, train_y = make(200)
  test_x, test_y = make(50)
  assert knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=5) == {
      "knn_top1": 100.0, "nn1_top1": 100.0}


def test_knn_hand_made_weights_and_ties():
  query = np.array([[1.0, 0.0]], np.float32)
  far = unit(180)  # similarity -1: never among the top k below
  # One class-0 neighbour at similarity 0.9, three class-1 neighbours at 0.5 (equal):
  # majority vote says 1; weights exp(s/T) give class 0 1 vs class 1 3·e^(−0.4/T), so
  # class 0 at T = 0.07 (3·e^−5.71 = 0.0099) and class 1 at T = 1 (3·e^−0.4 = 2.01).
  train = np.array([far, at_similarity(0.5), at_similarity(0.9), at_similarity(0.5),
                    at_similarity(0.5)], np.float32) * [[1.0], [2.0], [0.5], [3.0], [1.0]]
  labels = np.array([1, 1, 0, 1, 1])
  vote, nn1 = knn.knn_predict(train, labels, query, num_classes=2, k=4, temperature=0.07)
  assert (vote.tolist(), nn1.tolist()) == ([0], [0])
  vote, _ = knn.knn_predict(train, labels, query, num_classes=2, k=4, temperature=1.0)
  assert vote.tolist() == [1]
  # 1-NN and the vote disagree: class 0 at 0.9 vs three class-1 at 0.88:
  # 1 vs 3·e^(−0.02/0.07) = 2.25.
  train = np.array([at_similarity(0.88)] * 3 + [at_similarity(0.9), far], np.float32)
  labels = np.array([1, 1, 1, 0, 0])
  vote, nn1 = knn.knn_predict(train, labels, query, num_classes=2, k=4)
  assert (vote.tolist(), nn1.tolist()) == ([1], [0])
  # Equal similarities (angles ±40°), class 2 first in the bank: the 1-NN tie goes to the
  # lower training index (class 2), the equal vote to the lower class index (class 1).
  train = np.array([far, unit(40), unit(-40)], np.float32)
  labels = np.array([0, 2, 1])
  vote, nn1 = knn.knn_predict(train, labels, query, num_classes=3, k=2)
  assert (vote.tolist(), nn1.tolist()) == ([1], [2])
  # Accuracy in percent, chunked queries: the 3 queries in chunks of 2.
  queries = np.array([unit(40), unit(-40), unit(180)], np.float32)
  accuracy = knn.knn_accuracy(train, labels, queries, np.array([2, 2, 0]), num_classes=3,
                              k=1, chunk_size=2)
  assert accuracy == {"knn_top1": pytest.approx(200 / 3), "nn1_top1": pytest.approx(200 / 3)}


def test_knn_rejects_bad_input():
  x, y = np.ones((4, 3)), np.array([0, 1, 2, 3])
  with pytest.raises(ValueError, match="num_classes=3"):
    knn.knn_predict(x, y, x, num_classes=3)
  with pytest.raises(ValueError, match="pool='cls'"):
    knn.knn_predict(np.ones((4, 2, 3)), y, x, num_classes=4)


def test_leave_one_out_votes_among_the_other_queries():
  """Latent MIM's NN: each query's nearest *other* query. Three points per class on a
  circle; query 0's nearest other point is query 1 (class 1), not itself (class 0)."""
  x = np.array([unit(0), unit(5), unit(90), unit(92), unit(180), unit(181)], np.float32)
  y = np.array([0, 1, 1, 1, 0, 0])
  _, nn1 = knn.knn_predict(x, y, x, num_classes=2, k=1, leave_one_out=True)
  assert nn1.tolist() == [1, 0, 1, 1, 0, 0]
  result = knn.knn_accuracy(np.zeros((1, 2)), np.zeros(1, int), x, y, num_classes=2, k=1,
                            leave_one_out=True)  # the train set is not read
  assert result["nn1_top1"] == pytest.approx(100.0 * 4 / 6)
  with pytest.raises(ValueError, match="leave_one_out"):
    knn.knn_predict(x, y, x[:3], num_classes=2, leave_one_out=True)
