"""Input pipeline specification: sources, augmentation, determinism, resume, sharding."""
import re
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from mim_jax import data
from mim_jax.data import pipeline, synthetic

MEAN = np.array(data.default_data_config().mean, np.float32)
STD = np.array(data.default_data_config().std, np.float32)
CIFAR_SMALL = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10_small.npz"
ONE_PROCESS = {"process_index": 0, "process_count": 1}


def make_config(**data_fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"seed": 0, "data": data.default_data_config()})
  config.data.update({"image_size": 32, "synthetic_train_size": 20,
                      "synthetic_eval_size": 12, **data_fields})
  return config


def write_npz(path, train_images, test_images=None):
  """npz whose labels are example ids 0..n-1; the test split defaults to the train one."""
  test_images = train_images if test_images is None else test_images
  np.savez(path, x_train=train_images, y_train=np.arange(len(train_images)),
           x_test=test_images, y_test=np.arange(len(test_images)))
  return str(path)


def random_images(n, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def normalised(pixels):
  return (np.asarray(pixels, np.float32) / 255.0 - MEAN) / STD


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


# --- check_batch_size -------------------------------------------------------------------

def test_check_batch_size_accepts_divisible_batches():
  data.check_batch_size(64, num_devices=8, process_count=2)


@pytest.mark.parametrize("batch, devices, processes, hint", [
    (100, 8, 1, "multiple of 8 (e.g. 96 or 104)"),
    (4, 8, 1, "multiple of 8 (e.g. 8)"),
    (12, 4, 8, "8 processes"),
    (0, 8, 1, "positive"),
])
def test_check_batch_size_says_what_to_change(batch, devices, processes, hint):
  with pytest.raises(ValueError, match=re.escape(hint)):
    data.check_batch_size(batch, num_devices=devices, process_count=processes)


def test_iterators_reject_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match="4 processes"):
    data.create_train_iterator(make_config(), global_batch_size=10, process_index=0,
                               process_count=4)


# --- config errors ----------------------------------------------------------------------

def test_unknown_source_names_the_field():
  with pytest.raises(ValueError, match="config.data.source"):
    data.create_train_iterator(make_config(source="lmdb"), global_batch_size=4, **ONE_PROCESS)


def test_missing_npz_path_names_the_field(tmp_path):
  with pytest.raises(ValueError, match="config.data.path"):
    data.num_examples(make_config(source="npz"), "train")
  with pytest.raises(ValueError, match="config.data.path"):
    data.num_examples(make_config(source="image_folder", path=str(tmp_path / "nope")), "train")


def test_missing_split_names_the_fields(tmp_path):
  config = make_config(source="npz", path=write_npz(tmp_path / "d.npz", random_images(4)))
  expected = r"'validation'.*\['test', 'train'\].*config.data.eval_split"
  with pytest.raises(ValueError, match=expected):
    data.create_eval_iterator(config, "validation", global_batch_size=2, **ONE_PROCESS)


def test_an_npz_without_the_expected_arrays_lists_its_keys(tmp_path):
  np.savez(tmp_path / "d.npz", images=random_images(4), labels=np.arange(4))
  config = make_config(source="npz", path=str(tmp_path / "d.npz"))
  with pytest.raises(ValueError, match=re.escape(
      f"config.data.path='{tmp_path / 'd.npz'}' holds the arrays ['images', 'labels']; the npz "
      "source expects x_train (uint8 images) and y_train (labels) for each split")):
    data.num_examples(config, "train")


def test_unprepared_tfds_dataset_names_data_dir(tmp_path):
  config = make_config(source="tfds", tfds_name="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="config.data.data_dir"):
    data.num_examples(config, "train")


def test_bad_interpolation_names_the_field():
  with pytest.raises(ValueError, match="config.data.interpolation"):
    data.create_train_iterator(make_config(interpolation="lanczos7"), global_batch_size=4,
                               **ONE_PROCESS)


# --- synthetic --------------------------------------------------------------------------

def test_synthetic_batches_have_the_promised_shapes_and_range():
  config = make_config(num_classes=5)
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


# --- npz --------------------------------------------------------------------------------

def test_npz_constant_images_map_to_normalised_values(tmp_path):
  values = np.arange(0, 250, 25, dtype=np.uint8)  # 10 images, each one constant value
  images = np.broadcast_to(values[:, None, None, None], (10, 32, 32, 3)).copy()
  config = make_config(source="npz", path=write_npz(tmp_path / "c.npz", images))
  expected = normalised(np.broadcast_to(values[:, None], (10, 3)))

  batch = next(data.create_eval_iterator(config, "test", global_batch_size=10, **ONE_PROCESS))
  np.testing.assert_array_equal(batch["label"], np.arange(10))
  np.testing.assert_allclose(batch["image"], np.broadcast_to(expected[:, None, None, :],
                                                             batch["image"].shape), atol=1e-6)

  batch = next(data.create_train_iterator(config, global_batch_size=10, **ONE_PROCESS))
  np.testing.assert_allclose(batch["image"],
                             np.broadcast_to(expected[batch["label"], None, None, :],
                                             batch["image"].shape), atol=1e-4)


def test_npz_grey_and_rgba_images_become_rgb(tmp_path):
  grey = np.full((4, 32, 32), 100, np.uint8)
  rgba = np.zeros((4, 32, 32, 4), np.uint8)
  rgba[..., :3] = (10, 20, 30)
  rgba[..., 3] = 77
  config = make_config(source="npz", path=write_npz(tmp_path / "g.npz", grey, rgba))
  train = next(data.create_eval_iterator(config, "train", global_batch_size=4, **ONE_PROCESS))
  test = next(data.create_eval_iterator(config, "test", global_batch_size=4, **ONE_PROCESS))
  np.testing.assert_allclose(train["image"][0, 0, 0], normalised([100, 100, 100]), atol=1e-6)
  np.testing.assert_allclose(test["image"][0, 0, 0], normalised([10, 20, 30]), atol=1e-6)


def test_eval_covers_the_split_once_and_pads_the_last_batch(tmp_path):
  config = make_config(source="npz", path=write_npz(tmp_path / "e.npz", random_images(20)))
  batches = list(data.create_eval_iterator(config, "test", global_batch_size=8, **ONE_PROCESS))
  assert [b["valid"].sum() for b in batches] == [8, 8, 4]
  assert batches[-1]["valid"].tolist() == [True] * 4 + [False] * 4
  assert all(b["image"].shape == (8, 32, 32, 3) and b["label"].dtype == np.int32 for b in batches)
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(20))  # in order, no shuffling
  assert (batches[-1]["image"][4:] == 0).all()


def test_cifar10_small_loads():
  if not CIFAR_SMALL.exists():
    pytest.skip(f"{CIFAR_SMALL} not present")
  config = make_config(source="npz", path=str(CIFAR_SMALL))
  assert data.num_examples(config, "train") == 10_000
  assert data.num_examples(config, "test") == 2_000
  batch = next(data.create_eval_iterator(config, "test", global_batch_size=16, **ONE_PROCESS))
  with np.load(CIFAR_SMALL) as raw:
    pixels, labels = raw["x_test"][:16], raw["y_test"][:16]
  np.testing.assert_allclose(batch["image"], normalised(pixels), atol=1e-5)  # 32 px: untouched
  np.testing.assert_array_equal(batch["label"], labels.reshape(-1))
  train = next(data.create_train_iterator(config, global_batch_size=16, **ONE_PROCESS))
  assert train["image"].shape == (16, 32, 32, 3) and set(train["label"]) <= set(range(10))


# --- image folder -----------------------------------------------------------------------

COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200)}


def write_image_folder(root: Path):
  """train/<class>/ with JPEG, PNG, grey PNG and RGBA PNG of the class colour; val has bee."""
  for name, colour in COLOURS.items():
    folder = root / "train" / name
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 36), colour).save(folder / "a.jpg", quality=95)
    Image.new("RGB", (36, 40), colour).save(folder / "b.png")
    Image.new("RGBA", (36, 36), colour + (128,)).save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image")
  Image.new("L", (32, 32), 90).save(root / "train" / "cat" / "d.PNG")
  (root / "val" / "bee").mkdir(parents=True)
  Image.new("RGB", (64, 48), COLOURS["bee"]).save(root / "val" / "bee" / "x.jpeg")
  return str(root)


def test_image_folder_labels_follow_sorted_class_folders(tmp_path):
  config = make_config(source="image_folder", path=write_image_folder(tmp_path),
                       eval_split="val")
  assert data.num_examples(config, "train") == 10 and data.num_examples(config, "val") == 1
  batches = list(data.create_eval_iterator(config, "train", global_batch_size=4, **ONE_PROCESS))
  images = np.concatenate([b["image"][b["valid"]] for b in batches])
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
  expected = [COLOURS[name] for name in ("ant", "ant", "ant", "bee", "bee", "bee", "cat",
                                         "cat", "cat")] + [(90, 90, 90)]
  np.testing.assert_allclose(images.mean((1, 2)), normalised(expected), atol=0.05)  # JPEG

  val = next(data.create_eval_iterator(config, "val", global_batch_size=2, **ONE_PROCESS))
  assert val["label"][0] == 1 and val["valid"].tolist() == [True, False]  # bee, not 0
  train = next(data.create_train_iterator(config, global_batch_size=4, num_views=2,
                                          **ONE_PROCESS))
  assert train["image"].shape == (4, 2, 32, 32, 3)


def test_an_empty_class_folder_is_refused_by_name(tmp_path):
  root = write_image_folder(tmp_path)
  (tmp_path / "train" / "bat").mkdir()  # sorts first: every other label would shift by one
  (tmp_path / "train" / "bat" / "notes.txt").write_text("no images here")
  config = make_config(source="image_folder", path=root)
  with pytest.raises(ValueError, match=re.escape(
      f"Class folders without images (.jpg, .jpeg, .png, .bmp, .gif) in config.data.path="
      f"'{root}': {tmp_path / 'train' / 'bat'}. Each class folder becomes a label: add its "
      "images or remove the folder.")):
    data.num_examples(config, "train")


# --- tfds -------------------------------------------------------------------------------

def test_tfds_mock_imagenet_through_train_and_eval():
  config = make_config(source="tfds", tfds_name="imagenet2012", eval_split="validation",
                       shuffle_buffer=8)
  with tfds.testing.mock_data(num_examples=12):
    assert data.num_examples(config, "validation") == 12
    train = data.create_train_iterator(config, global_batch_size=4, **ONE_PROCESS)
    first = take(train, 5)  # 20 examples: crosses an epoch boundary
    resumed = take(data.create_train_iterator(config, global_batch_size=4, start_step=2,
                                              **ONE_PROCESS), 3)
    evals = list(data.create_eval_iterator(config, "validation", global_batch_size=8,
                                           **ONE_PROCESS))
  assert first[0]["image"].shape == (4, 32, 32, 3) and first[0]["image"].dtype == np.float32
  assert first[0]["label"].dtype == np.int32 and (first[0]["label"] < 1000).all()
  for got, want in zip(resumed, first[2:]):
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  assert [int(b["valid"].sum()) for b in evals] == [8, 4]
  assert evals[0]["image"].shape == (8, 32, 32, 3)


class TinyIds(tfds.core.GeneratorBasedBuilder):
  """A prepared tfds dataset: 21 grey 28 px images; the label is the example's index."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(28, 28, 1)),
        "label": tfds.features.ClassLabel(num_classes=21)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(21):
      yield i, {"image": np.full((28, 28, 1), 10 * i, np.uint8), "label": i}


def test_tfds_processes_read_disjoint_shards_that_cover_the_split(tmp_path):
  TinyIds(data_dir=str(tmp_path)).download_and_prepare()
  config = make_config(source="tfds", tfds_name="tiny_ids", data_dir=str(tmp_path),
                       image_size=28)
  assert data.num_examples(config, "train") == 21
  ids = []
  for index in range(2):
    batches = list(data.create_eval_iterator(config, "train", global_batch_size=8,
                                             process_index=index, process_count=2))
    assert len(batches) == 3 and batches[0]["image"].shape == (4, 28, 28, 3)
    images = np.concatenate([b["image"][b["valid"]] for b in batches])
    labels = np.concatenate([b["label"][b["valid"]] for b in batches])
    np.testing.assert_allclose(images, normalised(np.broadcast_to(  # grey -> RGB
        10 * labels[:, None, None, None], images.shape)), atol=1e-5)
    ids.append(labels)
  assert not set(ids[0]) & set(ids[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(21))


# --- determinism, resume, sharding ------------------------------------------------------

@pytest.fixture(params=["synthetic", "npz"])
def small_source(request, tmp_path):
  """A 20-example train split (npz labels are example ids), batches of 8 straddle epochs."""
  if request.param == "synthetic":
    return make_config()
  return make_config(source="npz", path=write_npz(tmp_path / "r.npz", random_images(20)))


def test_resume_yields_exactly_the_remaining_batches(small_source):
  fresh = take(data.create_train_iterator(small_source, global_batch_size=8, **ONE_PROCESS), 7)
  for start_step in (1, 3, 4):  # 3 and 4 start mid-epoch in epochs 1 and 2
    resumed = take(data.create_train_iterator(small_source, global_batch_size=8,
                                              start_step=start_step, **ONE_PROCESS), 3)
    for got, want in zip(resumed, fresh[start_step:]):
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])


def test_train_stream_depends_on_the_seed(small_source):
  batch = next(data.create_train_iterator(small_source, global_batch_size=8, **ONE_PROCESS))
  small_source.seed = 1
  other = next(data.create_train_iterator(small_source, global_batch_size=8, **ONE_PROCESS))
  assert not np.array_equal(batch["image"], other["image"])


def test_each_epoch_is_a_new_permutation(tmp_path):
  config = make_config(source="npz", path=write_npz(tmp_path / "p.npz", random_images(20)))
  batches = take(data.create_train_iterator(config, global_batch_size=10, **ONE_PROCESS), 6)
  stream = np.concatenate([b["label"] for b in batches]).reshape(3, 20)
  for epoch in stream:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(20))
  assert not np.array_equal(stream[0], stream[1]) and not np.array_equal(stream[1], stream[2])
  assert not np.array_equal(stream[0], np.arange(20))


def test_resuming_far_ahead_does_not_replay_the_skipped_steps(small_source):
  start = time.perf_counter()
  batch = next(data.create_train_iterator(small_source, global_batch_size=8,
                                          start_step=10**12, **ONE_PROCESS))
  assert batch["image"].shape == (8, 32, 32, 3)
  assert time.perf_counter() - start < 10.0  # replaying 8e12 examples would take forever


def test_processes_read_disjoint_shards_that_cover_the_split(tmp_path):
  config = make_config(source="npz",
                       path=write_npz(tmp_path / "s.npz", random_images(21), random_images(21)))
  eval_ids, train_ids, num_batches = [], [], []
  for index in range(2):
    process = {"process_index": index, "process_count": 2}
    batches = list(data.create_eval_iterator(config, "test", global_batch_size=8, **process))
    num_batches.append(len(batches))
    assert all(b["image"].shape[0] == 4 for b in batches)  # local batch = 8 / 2
    eval_ids.append(np.concatenate([b["label"][b["valid"]] for b in batches]))
    shard_size = len(eval_ids[-1])
    stream = take(data.create_train_iterator(config, global_batch_size=2, **process), shard_size)
    train_ids.append(np.concatenate([b["label"] for b in stream]))  # one epoch of the shard
  assert num_batches[0] == num_batches[1]  # no process waits for another at eval
  for ids in (eval_ids, train_ids):
    assert not set(ids[0]) & set(ids[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(21))


# --- augmentation -----------------------------------------------------------------------

def test_random_resized_crop_samples_within_scale_and_ratio():
  for i in range(100):
    key = tf.constant([i, 7], tf.int64)
    top, left, h, w = (int(v) for v in pipeline.random_resized_crop_window(
        60, 80, key, (0.2, 0.5), (0.75, 4 / 3)))
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
    assert 0.2 - 0.05 <= h * w / (60 * 80) <= 0.5 + 0.05  # up to rounding of h and w
    assert 0.75 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_random_resized_crop_full_scale_takes_the_whole_image_or_falls_back_centred():
  key = tf.constant([1, 2], tf.int64)
  window = pipeline.random_resized_crop_window(40, 40, key, (1.0, 1.0), (1.0, 1.0))
  assert [int(v) for v in window] == [0, 0, 40, 40]
  window = pipeline.random_resized_crop_window(10, 100, key, (1.0, 1.0), (1.0, 1.0))
  assert [int(v) for v in window] == [0, 45, 10, 10]  # no square of area 1000 fits


def test_full_scale_train_crop_is_the_whole_image_resized(tmp_path):
  images = random_images(4, size=48)
  config = make_config(source="npz", path=write_npz(tmp_path / "w.npz", images),
                       crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
  batch = next(data.create_train_iterator(config, global_batch_size=4, **ONE_PROCESS))
  resized = tf.image.resize(images, [32, 32], method="bicubic", antialias=True).numpy()
  expected = normalised(np.clip(resized, 0, 255))[batch["label"]]
  np.testing.assert_allclose(batch["image"], expected, atol=1e-4)


def test_flip_happens_about_half_the_time(tmp_path):
  image = np.zeros((1, 32, 32, 3), np.uint8)
  image[:, :, 16:] = 255  # dark left half, bright right half
  full_view = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
  path = write_npz(tmp_path / "f.npz", image)
  flipped = []
  for flip in (True, False):
    config = make_config(source="npz", path=path, flip=flip, **full_view)
    batch = next(data.create_train_iterator(config, global_batch_size=200, **ONE_PROCESS))
    left, right = batch["image"][:, :, :16], batch["image"][:, :, 16:]
    flipped.append(int((left.mean((1, 2, 3)) > right.mean((1, 2, 3))).sum()))
  assert 70 <= flipped[0] <= 130 and flipped[1] == 0


def test_two_views_are_different_crops_of_the_same_image(tmp_path):
  images = random_images(8)
  images[..., 0] = np.arange(8)[:, None, None] * 30  # red channel: constant per image
  config = make_config(source="npz", path=write_npz(tmp_path / "v.npz", images))
  batch = next(data.create_train_iterator(config, global_batch_size=8, num_views=2,
                                          **ONE_PROCESS))
  assert batch["image"].shape == (8, 2, 32, 32, 3)
  red = batch["image"][..., 0].mean((2, 3))  # [b, views]
  expected_red = normalised(np.stack([batch["label"] * 30] * 3, -1))[:, 0]
  np.testing.assert_allclose(red, np.stack([expected_red] * 2, 1), atol=1e-3)
  assert (np.abs(batch["image"][:, 0] - batch["image"][:, 1]).mean((1, 2, 3)) > 0.1).all()



def coordinate_ramp(size=20):
  """uint8 [size, size, 3]: red = 10·row, green = 10·column, blue = 0."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  return np.stack([10 * rows, 10 * cols, np.zeros_like(rows)], -1).astype(np.uint8)


def resample_view(source, box, flip, view_size):
  """The documented geometry, by hand: view pixel centres map to source points of the
  crop `box`, which bilinear upsampling reads between the crop's pixels (clamped at its
  border pixels)."""
  height, width = source.shape[:2]
  y0, h = box[0] * height, box[2] * height
  x0, w = box[1] * width, box[3] * width
  u = (np.arange(view_size) + 0.5) / view_size
  rows = np.clip(y0 + h * u - 0.5, y0, y0 + h - 1)  # [S] source rows
  cols = np.clip(x0 + w * (1 - u if flip else u) - 0.5, x0, x0 + w - 1)  # [S]
  r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
  r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
  fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
  s = source.astype(np.float64)
  top = s[r0][:, c0] * (1 - fc) + s[r0][:, c1] * fc
  bottom = s[r1][:, c0] * (1 - fc) + s[r1][:, c1] * fc
  return top * (1 - fr) + bottom * fr  # [S, S, 3]


@pytest.mark.parametrize("source", ["npz_two_views", "jpeg_one_view"])
def test_crop_box_and_flip_describe_the_crop_that_was_taken(tmp_path, source):
  """Pixels of the ramp image encode their coordinates; every view must equal the source
  resampled at the geometry the pipeline reports (crops < 32 px: upsampling only)."""
  ramp = coordinate_ramp()
  fields = dict(interpolation="bilinear", crop_scale=(0.2, 1.0), flip=True)
  if source == "npz_two_views":
    config = make_config(source="npz", path=write_npz(tmp_path / "ramp.npz", ramp[None]),
                         **fields)
    num_views, pixels = 2, ramp
  else:  # the JPEG path decodes only the crop window (tf.image.decode_and_crop_jpeg)
    path = tmp_path / "train" / "ramp" / "r.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(ramp).save(path, quality=95, subsampling=0)  # 4:4:4: crops decode alike
    config = make_config(source="image_folder", path=str(tmp_path), **fields)
    num_views, pixels = 1, tf.io.decode_jpeg(path.read_bytes()).numpy()
  batch = next(data.create_train_iterator(config, global_batch_size=16, num_views=num_views,
                                          **ONE_PROCESS))
  leading = (16,) if num_views == 1 else (16, num_views)
  assert batch["crop_box"].shape == leading + (4,) and batch["crop_box"].dtype == np.float32
  assert batch["flip"].shape == leading and batch["flip"].dtype == bool
  images = batch["image"].reshape(-1, 32, 32, 3)
  boxes, flips = batch["crop_box"].reshape(-1, 4), batch["flip"].reshape(-1)
  assert (boxes >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 1 + 1e-6).all()
  assert 0 < flips.sum() < len(flips) and len(np.unique(boxes, axis=0)) > len(boxes) // 2
  for image, box, flip in zip(images, boxes, flips):
    np.testing.assert_allclose(image * STD * 255 + MEAN * 255,
                               resample_view(pixels, box, flip, 32), atol=2e-3)
