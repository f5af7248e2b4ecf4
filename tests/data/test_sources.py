"""mim_jax/data/sources.py: the synthetic, npz, image-folder and TFDS sources and their
config errors."""
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import (CIFAR_NPZ, ONE_PROCESS, data_config, normalised, take, tiny_mae_config,
                      uint8_images, write_npz)
from mim_jax import data, pretrain


# --- config errors -----------------------------------------------------------------------

def test_unknown_source_names_the_field():
  with pytest.raises(ValueError, match="config.data.source"):
    data.create_train_iterator(data_config(source="lmdb"), global_batch_size=4, **ONE_PROCESS)


def test_missing_npz_path_names_the_field(tmp_path):
  with pytest.raises(ValueError, match="config.data.path"):
    data.num_examples(data_config(source="npz"), "train")
  with pytest.raises(ValueError, match="config.data.path"):
    data.num_examples(data_config(source="image_folder", path=str(tmp_path / "nope")), "train")


def test_missing_split_names_the_fields(tmp_path):
  config = data_config(source="npz", path=write_npz(tmp_path / "d.npz", uint8_images(4)))
  expected = r"'validation'.*\['test', 'train'\].*config.data.eval_split"
  with pytest.raises(ValueError, match=expected):
    data.create_eval_iterator(config, "validation", global_batch_size=2, **ONE_PROCESS)


def test_an_npz_without_the_expected_arrays_lists_its_keys(tmp_path):
  np.savez(tmp_path / "d.npz", images=uint8_images(4), labels=np.arange(4))
  config = data_config(source="npz", path=str(tmp_path / "d.npz"))
  with pytest.raises(ValueError, match=re.escape(
      f"config.data.path='{tmp_path / 'd.npz'}' holds the arrays ['images', 'labels']; the npz "
      "source expects x_train (uint8 images) and y_train (labels) for each split")):
    data.num_examples(config, "train")


def test_unprepared_tfds_dataset_names_data_dir(tmp_path):
  config = data_config(source="tfds", tfds_name="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="config.data.data_dir"):
    data.num_examples(config, "train")


def test_missing_data_dir_and_missing_path_are_named(tmp_path):
  config = tiny_mae_config()
  config.data.update(source="tfds", tfds_name="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="config.data.data_dir"):
    pretrain.run(config, str(tmp_path / "run"))
  config = tiny_mae_config()
  config.data.source = "npz"
  with pytest.raises(ValueError, match="config.data.path"):
    pretrain.run(config, str(tmp_path / "run"))


# --- npz ---------------------------------------------------------------------------------

def test_npz_constant_images_map_to_normalised_values(tmp_path):
  values = np.arange(0, 250, 25, dtype=np.uint8)  # 10 images, each one constant value
  images = np.broadcast_to(values[:, None, None, None], (10, 32, 32, 3)).copy()
  config = data_config(source="npz", path=write_npz(tmp_path / "c.npz", images))
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
  config = data_config(source="npz", path=write_npz(tmp_path / "g.npz", grey, rgba))
  train = next(data.create_eval_iterator(config, "train", global_batch_size=4, **ONE_PROCESS))
  test = next(data.create_eval_iterator(config, "test", global_batch_size=4, **ONE_PROCESS))
  np.testing.assert_allclose(train["image"][0, 0, 0], normalised([100, 100, 100]), atol=1e-6)
  np.testing.assert_allclose(test["image"][0, 0, 0], normalised([10, 20, 30]), atol=1e-6)


def test_cifar10_small_loads():
  if not CIFAR_NPZ.exists():
    pytest.skip(f"{CIFAR_NPZ} not present")
  config = data_config(source="npz", path=str(CIFAR_NPZ))
  assert data.num_examples(config, "train") == 10_000
  assert data.num_examples(config, "test") == 2_000
  batch = next(data.create_eval_iterator(config, "test", global_batch_size=16, **ONE_PROCESS))
  with np.load(CIFAR_NPZ) as raw:
    pixels, labels = raw["x_test"][:16], raw["y_test"][:16]
  np.testing.assert_allclose(batch["image"], normalised(pixels), atol=1e-5)  # 32 px: untouched
  np.testing.assert_array_equal(batch["label"], labels.reshape(-1))
  train = next(data.create_train_iterator(config, global_batch_size=16, **ONE_PROCESS))
  assert train["image"].shape == (16, 32, 32, 3) and set(train["label"]) <= set(range(10))


# --- image folder ------------------------------------------------------------------------

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
  config = data_config(source="image_folder", path=write_image_folder(tmp_path),
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
  config = data_config(source="image_folder", path=root)
  with pytest.raises(ValueError, match=re.escape(
      f"Class folders without images (.jpg, .jpeg, .png, .bmp, .gif) in config.data.path="
      f"'{root}': {tmp_path / 'train' / 'bat'}. Each class folder becomes a label: add its "
      "images or remove the folder.")):
    data.num_examples(config, "train")


def test_num_classes_of_each_source(tmp_path):
  """What fine-tuning and the streamed probe take when config.num_classes is None."""
  assert data.num_classes(data_config(num_classes=7)) == 7  # synthetic: its field
  # npz: 1 + the largest label of either split (write_npz's labels are example ids)
  path = write_npz(tmp_path / "a.npz", uint8_images(5), uint8_images(9))
  assert data.num_classes(data_config(source="npz", path=path)) == 9
  root = write_image_folder(tmp_path / "folder")  # ant, bee, cat: val has only bee
  assert data.num_classes(data_config(source="image_folder", path=root,
                                      eval_split="val")) == 3
  with tfds.testing.mock_data(num_examples=4):
    assert data.num_classes(data_config(source="tfds", tfds_name="imagenet2012")) == 1000


# --- tfds --------------------------------------------------------------------------------

def test_tfds_mock_imagenet_through_train_and_eval():
  config = data_config(source="tfds", tfds_name="imagenet2012", eval_split="validation",
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
  config = data_config(source="tfds", tfds_name="tiny_ids", data_dir=str(tmp_path),
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
