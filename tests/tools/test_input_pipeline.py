"""The input-pipeline benchmark (mim_jax/tools/input_pipeline.py): which recipe's input it
times, on which JPEGs, and what it counts."""
import pytest
from conftest import config_file

from mim_jax.tools import input_pipeline


def test_each_recipe_times_its_own_augmentations_and_views():
  finetune = input_pipeline.recipe_input(config_file("eval/finetune.py", "vit_base"), 64)
  assert finetune.data.image_size == 64  # left to the pretrained checkpoint: the flag's
  assert finetune.data.randaugment == "rand-m9-mstd0.5-inc1"
  assert finetune.data.random_erasing_prob == 0.25
  assert tuple(finetune.data.crop_scale) == (0.08, 1.0)
  assert input_pipeline.num_views(finetune) == 1
  mae = config_file("mae.py", "vit_large")
  assert input_pipeline.recipe_input(mae, 64) is mae  # a pretraining recipe as it is
  assert mae.data.image_size == 224 and not mae.data.get("randaugment")
  assert input_pipeline.num_views(mae) == 1
  assert input_pipeline.num_views(config_file("multiview_mae.py")) == 2
  default = input_pipeline.recipe_input(None, 96)
  assert (default.data.image_size, tuple(default.data.crop_scale)) == (96, (0.2, 1.0))


def test_real_jpegs_are_found_under_the_folder_and_every_timed_image_counted(tmp_path):
  photos = tmp_path / "photos"
  input_pipeline.write_jpeg_folder(str(photos), 6)
  (photos / "notes.txt").write_text("not an image")
  for i, path in enumerate(sorted(photos.rglob("*.jpg"))):
    if i % 2:
      path.rename(path.with_suffix(".JPEG"))  # ImageNet's spelling is found too
  before = sorted(photos.rglob("*"))
  config = input_pipeline.recipe_input(config_file("eval/finetune.py", "vit_base"), 32)
  rate = input_pipeline.measure(config, str(photos), batch_size=4, batches=3)
  assert rate.images == 12
  assert rate.source.startswith(f"6 JPEGs under {photos} (")
  assert rate.images_per_cpu_s == pytest.approx(12 / rate.cpu_s)
  assert rate.cpu_s > 0 and rate.wall_s > 0
  assert sorted(photos.rglob("*")) == before  # the links went to a temporary folder


def test_a_folder_without_jpegs_is_one_clear_error(tmp_path):
  (tmp_path / "a.png").write_bytes(b"")
  with pytest.raises(ValueError, match="holds no .jpg or .jpeg file"):
    input_pipeline.measure(input_pipeline.recipe_input(None, 32), str(tmp_path), 4, 1)
