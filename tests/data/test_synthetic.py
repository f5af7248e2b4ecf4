"""mim_jax/data/synthetic.py: the procedurally drawn labelled images."""
import time

import numpy as np

from conftest import ONE_PROCESS, data_config, normalised
from mim_jax import data
from mim_jax.data import synthetic


def test_synthetic_batches_have_the_promised_shapes_and_range():
  config = data_config(num_classes=5)
  batch = next(data.create_train_iterator(config, global_batch_size=8, **ONE_PROCESS))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert set(batch["label"]) <= set(range(5))
  assert (batch["image"] >= normalised(0.0) - 1e-5).all()
  assert (batch["image"] <= normalised(255.0) + 1e-5).all()
  assert data.num_examples(config, "train") == 20 and data.num_examples(config, "test") == 12


def test_synthetic_images_are_a_pure_function_of_seed_and_shardable():
  images, labels = synthetic.make_images(50, 32, 10, seed=3, split_id=0)
  again, _ = synthetic.make_images(50, 32, 10, seed=3, split_id=0)
  other_seed, _ = synthetic.make_images(50, 32, 10, seed=4, split_id=0)
  odd, odd_labels = synthetic.make_images(50, 32, 10, seed=3, split_id=0,
                                          indices=np.arange(1, 50, 2))
  np.testing.assert_array_equal(images, again)
  assert (images != other_seed).mean() > 0.5
  np.testing.assert_array_equal(images[1::2], odd)
  np.testing.assert_array_equal(labels[1::2], odd_labels)
  assert np.bincount(labels).tolist() == [5] * 10  # balanced classes


def test_synthetic_generation_is_fast():
  start = time.perf_counter()
  synthetic.make_images(2000, 32, 10, seed=0, split_id=0)
  assert time.perf_counter() - start < 2.0


def test_synthetic_classes_are_learnable_but_not_trivial():
  images, labels = synthetic.make_images(3000, 32, 10, seed=0, split_id=0)
  features = images.astype(np.float32).reshape(-1, 8, 4, 8, 4, 3).mean((2, 4)).reshape(3000, -1)
  train, test = slice(0, 2500), slice(2500, None)
  centroids = np.stack([features[train][labels[train] == c].mean(0) for c in range(10)])
  distances = ((features[test][:, None] - centroids[None]) ** 2).sum(-1)
  accuracy = (distances.argmin(1) == labels[test]).mean()
  assert 0.3 < accuracy < 0.9  # chance is 0.1; a pixel template does not solve it
