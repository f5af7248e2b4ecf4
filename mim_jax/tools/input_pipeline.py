"""Input-pipeline throughput on JPEG files, per CPU core.

python -m mim_jax.tools.input_pipeline [--jpeg_dir=DIR] [--config=configs/mae.py:vit_large] \
    [--batch_size=64] [--batches=40] [--image_size=224] [--num_images=512]

Times the train iterator of mim_jax.data over `--batches` batches after two warm-up
batches: the tf.data pipeline that training runs (decode of the crop window,
RandomResizedCrop, flip, normalisation, batching, and whatever else `--config`'s data
section turns on: RandAugment and random erasing in the fine-tuning recipes, the two views
of Multi-View MAE). Prints images/s (wall) and images per CPU-second of this process (user +
system time of all its threads): the rate per core (per vCPU where cores are
hyperthreaded), which other load on the machine does not inflate.

The images:
  --jpeg_dir  every .jpg/.jpeg file under DIR, e.g. real ImageNet photographs. The 1000
              validation samples of github.com/EliSchwartz/imagenet-sample-images (one
              per class, ~110 kB, ImageNet's sizes) are what docs/RESULTS.md measured;
              with a git checkout of it: `--jpeg_dir=imagenet-sample-images`.
  otherwise   `--num_images` ImageNet-like JPEGs written to a temporary folder (500x375
              and 375x500, quality 90, smooth colour fields with noise, ~100 kB each).
--config picks the recipe (default: the trainer's defaults at --image_size: crop scale
0.2–1, bicubic, flip). `python -m mim_jax.tools.aot --plan` runs the same measurement on
its recipe to say how many host cores the input needs.
"""
import dataclasses
import os
import tempfile
import time
from typing import Optional, Tuple

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from mim_jax import data, defaults, methods
from mim_jax.evaluation import run

FLAGS = flags.FLAGS
JPEG_SUFFIXES = (".jpg", ".jpeg")


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  config_flags.DEFINE_config_file("config", None, "The recipe whose input pipeline to time "
                                  "(its data section and views); default: the trainer's "
                                  "defaults at --image_size.")
  define_image_flags()
  flags.DEFINE_integer("batch_size", 64, "Batch of the iterator.")
  flags.DEFINE_integer("batches", 40, "Timed batches.")
  flags.DEFINE_integer("image_size", 224, "Output side without --config, or where --config "
                       "leaves it to the pretrained checkpoint (the fine-tuning recipes).")


def define_image_flags() -> None:
  """The flags that choose the images (also aot's, for --plan)."""
  flags.DEFINE_string("jpeg_dir", None, "Time real JPEGs: every .jpg/.jpeg file under this "
                      "folder (default: --num_images synthetic ImageNet-like JPEGs).")
  flags.DEFINE_integer("num_images", 512, "Synthetic JPEG files to write without --jpeg_dir.")


@dataclasses.dataclass(frozen=True)
class InputRate:
  """What one timing of the train iterator gave."""
  images: int
  wall_s: float
  cpu_s: float  # user + system time of this process's threads
  source: str  # which images, in words

  @property
  def images_per_s(self) -> float:
    return self.images / self.wall_s

  @property
  def images_per_cpu_s(self) -> float:
    return self.images / self.cpu_s


def natural_like_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3]: bilinearly upsampled random colour field plus pixel noise."""
  coarse = rng.uniform(0, 255, size=(height // 25 + 2, width // 25 + 2, 3)).astype(np.float32)
  smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
      (width, height), Image.BILINEAR), np.float32)
  return np.clip(smooth + rng.normal(0.0, 20.0, smooth.shape), 0, 255).astype(np.uint8)


def write_jpeg_folder(root: str, num_images: int, seed: int = 0) -> int:
  """root/train/<class>/*.jpg with alternating landscape/portrait 500x375 images; returns
  the total bytes written."""
  rng = np.random.default_rng(seed)
  total = 0
  for i in range(num_images):
    class_dir = os.path.join(root, "train", f"class_{i % 4}")
    os.makedirs(class_dir, exist_ok=True)
    h, w = (375, 500) if i % 2 == 0 else (500, 375)
    path = os.path.join(class_dir, f"{i:05d}.jpg")
    Image.fromarray(natural_like_image(rng, h, w)).save(path, quality=90)
    total += os.path.getsize(path)
  return total


def link_jpeg_folder(root: str, jpeg_dir: str) -> Tuple[int, int]:
  """root/train/<class>/ links to every JPEG under `jpeg_dir` (four classes in turn, so the
  image-folder source reads them); returns their total bytes and their number. Raises if
  there is none."""
  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(jpeg_dir) for f in files
                 if f.lower().endswith(JPEG_SUFFIXES))
  if not paths:
    raise ValueError(f"--jpeg_dir={jpeg_dir!r} holds no .jpg or .jpeg file: give a folder "
                     "of JPEG images (searched recursively).")
  for i, path in enumerate(paths):
    class_dir = os.path.join(root, "train", f"class_{i % 4}")
    os.makedirs(class_dir, exist_ok=True)
    os.symlink(os.path.abspath(path), os.path.join(class_dir, f"{i:05d}.jpg"))
  return sum(os.path.getsize(p) for p in paths), len(paths)


def num_views(config) -> int:
  """Views per image of the recipe's train batches: its method's (a pretraining config)
  or one (an evaluation config)."""
  if "method" in config and config.method.get("name") in methods.METHODS:
    return methods.METHODS[config.method.name].num_views
  return 1


def recipe_input(config, image_size: int):
  """{seed, data, ...} of the input that `config` trains on: a pretraining config as it is
  (its image size); an evaluation config (configs/eval/) its data fields on the trainer's
  defaults at `image_size`, as `mim_jax.evaluation.run.pipeline_config` puts them on the
  pretraining run's; None: the trainer's defaults at `image_size`."""
  if config is None or "protocol" in config:
    base = defaults.base_config()
    base.data.image_size = image_size
    return base if config is None else run.pipeline_config(config, base, image_size)
  return config


def measure(config, jpeg_dir: Optional[str], batch_size: int, batches: int,
            num_images: int = 512) -> InputRate:
  """Time `batches` batches of `config`'s train iterator (after two warm-up ones) on the
  JPEGs under `jpeg_dir`, or on `num_images` synthetic ones when it is None."""
  with tempfile.TemporaryDirectory() as root:
    if jpeg_dir is None:
      size, count = write_jpeg_folder(root, num_images), num_images
      kind = "synthetic ImageNet-like JPEGs"
    else:
      size, count = link_jpeg_folder(root, jpeg_dir)
      kind = f"JPEGs under {jpeg_dir}"
    config = config.copy_and_resolve_references()
    config.data.source, config.data.path = "image_folder", root
    iterator = data.create_train_iterator(config, global_batch_size=batch_size,
                                          num_views=num_views(config), process_index=0,
                                          process_count=1)
    for _ in range(2):
      next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return InputRate(images=batches * batch_size, wall_s=wall, cpu_s=cpu,
                   source=f"{count} {kind} ({size / count / 1e3:.0f} kB average)")


def cpu_model() -> str:
  """This machine's CPU as /proc/cpuinfo names it ('unknown CPU' where it cannot be read)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return names[0] if names else "unknown CPU"


def describe(config, rate: InputRate) -> str:
  """Two lines: what was timed, and the rates."""
  d = config.data
  augment = ", ".join(filter(None, [
      f"RandomResizedCrop {d.image_size} {tuple(d.crop_scale)} {d.interpolation}",
      "flip" if d.flip else "", d.get("randaugment", ""),
      f"random erasing {d.random_erasing_prob}" if d.get("random_erasing_prob", 0) else "",
      f"{num_views(config)} views" if num_views(config) > 1 else ""]))
  return (f"{rate.source}: {augment}; {os.cpu_count()} cores of "
          f"{cpu_model()}\n"
          f"images_per_s={rate.images_per_s:.1f} (wall) "
          f"images_per_cpu_s={rate.images_per_cpu_s:.1f} (per core: {rate.images} images / "
          f"{rate.cpu_s:.2f} CPU-s of this process)")


def main(argv):
  del argv
  config = recipe_input(FLAGS.config, FLAGS.image_size)
  rate = measure(config, FLAGS.jpeg_dir, FLAGS.batch_size, FLAGS.batches, FLAGS.num_images)
  print(describe(config, rate))


if __name__ == "__main__":
  define_flags()
  app.run(main)
