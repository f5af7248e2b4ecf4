"""mim_jax/data/pipeline.py: batch sizes per process, augmentation, determinism, resume,
sharding over processes, unreadable images."""
import logging
import re
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import (MEAN, ONE_PROCESS, STD, coordinate_ramp, data_config, normalised,
                      scalar_series, take, tiny_mae_config, uint8_images, write_npz)
from mim_jax import data, pretrain
from mim_jax.data import pipeline


# --- check_batch_size --------------------------------------------------------------------

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
    data.create_train_iterator(data_config(), global_batch_size=10, process_index=0,
                               process_count=4)


def test_bad_interpolation_names_the_field():
  with pytest.raises(ValueError, match="config.data.interpolation"):
    data.create_train_iterator(data_config(interpolation="lanczos7"), global_batch_size=4,
                               **ONE_PROCESS)


def test_eval_covers_the_split_once_and_pads_the_last_batch(tmp_path):
  config = data_config(source="npz", path=write_npz(tmp_path / "e.npz", uint8_images(20)))
  batches = list(data.create_eval_iterator(config, "test", global_batch_size=8, **ONE_PROCESS))
  assert [b["valid"].sum() for b in batches] == [8, 8, 4]
  assert batches[-1]["valid"].tolist() == [True] * 4 + [False] * 4
  assert all(b["image"].shape == (8, 32, 32, 3) and b["label"].dtype == np.int32 for b in batches)
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(20))  # in order, no shuffling
  assert (batches[-1]["image"][4:] == 0).all()


# --- determinism, resume, sharding -------------------------------------------------------

@pytest.fixture(params=["synthetic", "npz"])
def small_source(request, tmp_path):
  """A 20-example train split (npz labels are example ids), batches of 8 straddle epochs."""
  if request.param == "synthetic":
    return data_config()
  return data_config(source="npz", path=write_npz(tmp_path / "r.npz", uint8_images(20)))


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
  config = data_config(source="npz", path=write_npz(tmp_path / "p.npz", uint8_images(20)))
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
  config = data_config(source="npz",
                       path=write_npz(tmp_path / "s.npz", uint8_images(21), uint8_images(21)))
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


# --- augmentation ------------------------------------------------------------------------

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
  images = uint8_images(4, size=48)
  config = data_config(source="npz", path=write_npz(tmp_path / "w.npz", images),
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
    config = data_config(source="npz", path=path, flip=flip, **full_view)
    batch = next(data.create_train_iterator(config, global_batch_size=200, **ONE_PROCESS))
    left, right = batch["image"][:, :, :16], batch["image"][:, :, 16:]
    flipped.append(int((left.mean((1, 2, 3)) > right.mean((1, 2, 3))).sum()))
  assert 70 <= flipped[0] <= 130 and flipped[1] == 0


def test_two_views_are_different_crops_of_the_same_image(tmp_path):
  images = uint8_images(8)
  images[..., 0] = np.arange(8)[:, None, None] * 30  # red channel: constant per image
  config = data_config(source="npz", path=write_npz(tmp_path / "v.npz", images))
  batch = next(data.create_train_iterator(config, global_batch_size=8, num_views=2,
                                          **ONE_PROCESS))
  assert batch["image"].shape == (8, 2, 32, 32, 3)
  red = batch["image"][..., 0].mean((2, 3))  # [b, views]
  expected_red = normalised(np.stack([batch["label"] * 30] * 3, -1))[:, 0]
  np.testing.assert_allclose(red, np.stack([expected_red] * 2, 1), atol=1e-3)
  assert (np.abs(batch["image"][:, 0] - batch["image"][:, 1]).mean((1, 2, 3)) > 0.1).all()


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
    config = data_config(source="npz", path=write_npz(tmp_path / "ramp.npz", ramp[None]),
                         **fields)
    num_views, pixels = 2, ramp
  else:  # the JPEG path decodes only the crop window (tf.image.decode_and_crop_jpeg)
    path = tmp_path / "train" / "ramp" / "r.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(ramp).save(path, quality=95, subsampling=0)  # 4:4:4: crops decode alike
    config = data_config(source="image_folder", path=str(tmp_path), **fields)
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


# --- unreadable images -------------------------------------------------------------------

def plant_image_folder(root, good_per_class=3):
  """root/train/<class>/ with good JPEG/PNG files plus a truncated JPEG, a truncated
  PNG, a text file named .jpg and a README that is not an image at all."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for label, name in enumerate(("cat", "dog")):
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for i in range(good_per_class):
      pixels = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
  good = (root / "train" / "cat" / "1.jpg").read_bytes()
  (root / "train" / "cat" / "truncated.jpg").write_bytes(good[:len(good) // 3])
  png = (root / "train" / "dog" / "0.png").read_bytes()
  (root / "train" / "dog" / "truncated.png").write_bytes(png[:len(png) // 2])
  (root / "train" / "dog" / "not_an_image.jpg").write_text("hello")
  (root / "train" / "dog" / "README.txt").write_text("not listed: not an image suffix")
  return 3  # unreadable listed files


def test_unreadable_images_are_skipped_named_and_counted(tmp_path, caplog):
  from mim_jax import data
  caplog.set_level(logging.WARNING, logger="absl")
  bad = plant_image_folder(tmp_path / "images")
  config = tiny_mae_config()
  config.data.update(source="image_folder", path=str(tmp_path / "images"), image_size=16)
  assert data.num_examples(config, "train") == 6 + bad
  iterator = data.create_train_iterator(config, global_batch_size=2, process_index=0,
                                        process_count=1)
  batches = [next(iterator) for _ in range(13)]  # 26 good images: 4 epochs of 9 files + 2
  elements = np.concatenate([b["element"] for b in batches])
  epochs = elements // (6 + bad)
  assert [int((epochs == e).sum()) for e in range(4)] == [6] * 4  # the 3 bad ones skipped
  assert all(np.isfinite(b["image"]).all() and set(b["label"]) <= {0, 1} for b in batches)
  messages = [r.getMessage() for r in caplog.records]
  named = re.findall(r"^Skipped image file \S+/train/(\S+): it cannot be read or decoded\.$",
                     "\n".join(messages), re.M)
  assert len(named) == 5 and set(named) == {  # the first 5 of 12 or more skips, then a count
      "cat/truncated.jpg", "dog/truncated.png", "dog/not_an_image.jpg"}
  assert "Skipped 10 unreadable image files so far (the first 5 named above)." in messages
  caplog.clear()
  evaluated = list(data.create_eval_iterator(config, "train", global_batch_size=4,
                                             process_index=0, process_count=1))
  assert sum(int(b["valid"].sum()) for b in evaluated) == 6 and "index" not in evaluated[0]
  assert len([r for r in caplog.records if r.getMessage().startswith("Skipped image")]) == 3
  config.update(batch_size=8, num_train_steps=3, checkpoint_every_steps=3)
  pretrain.run(config, str(tmp_path / "run"))
  skipped = scalar_series(str(tmp_path / "run"), "skipped_images")
  assert skipped[-1] >= bad and skipped == sorted(skipped)


# --- the global batch under different process counts -------------------------------------

def test_the_global_batch_does_not_depend_on_the_process_count(tmp_path):
  """Batches of 12 from a 20-example split (step 1 straddles two epochs): the local
  batches of 4 processes, resumed at step 1 from their element positions, concatenate to
  the global batches of 1 process, crops and flips included."""
  images = np.random.default_rng(0).integers(0, 256, (20, 24, 24, 3), dtype=np.uint8)
  np.savez(tmp_path / "d.npz", x_train=images, y_train=np.arange(20), x_test=images,
           y_test=np.arange(20))
  config = tiny_mae_config()
  config.data.update(source="npz", path=str(tmp_path / "d.npz"))

  def local_batches(count, start_step=0):
    """Steps start_step..3: per step, the list of each process's local batch."""
    iterators = [data.create_train_iterator(
        config, global_batch_size=12, process_index=p, process_count=count,
        start_element=start_step * 12 // count) for p in range(count)]
    return [[next(it) for it in iterators] for _ in range(4 - start_step)]

  want = [b[0] for b in local_batches(1)]
  epoch = np.concatenate([b["label"] for b in want])[:20]
  np.testing.assert_array_equal(np.sort(epoch), np.arange(20))  # a permutation per epoch
  for got, one in zip(local_batches(4, start_step=1), want[1:]):
    for key in ("image", "label", "crop_box", "flip"):
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), one[key])
