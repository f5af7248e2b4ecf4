"""Input-pipeline throughput on JPEG files, per CPU core.

python -m mim_jax.tools.input_pipeline [--num_images=512] [--batch_size=64] \
    [--batches=40] [--image_size=224]

Writes `--num_images` ImageNet-like JPEGs (500x375 and 375x500, quality 90, smooth colour
fields with noise, ~100 kB each like ImageNet's) to a temporary image folder, then
times the train iterator of mim_jax.data (decode of the crop window, RandomResizedCrop
(0.2–1, bicubic), flip, normalisation, batching) over `--batches` batches after two warm-up
batches. Prints images/s (wall) and images per CPU-second of this process (user + system
time of all its threads): the per-core rate, which other load on the machine does not
inflate. Compare it with the train step's images/s (train_step.py).
"""
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from mim_jax import data, defaults

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  flags.DEFINE_integer("num_images", 512, "JPEG files to write.")
  flags.DEFINE_integer("batch_size", 64, "Batch of the iterator.")
  flags.DEFINE_integer("batches", 40, "Timed batches.")
  flags.DEFINE_integer("image_size", 224, "Output side.")


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


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as root:
    size_bytes = write_jpeg_folder(root, FLAGS.num_images)
    config = defaults.base_config()
    config.data.source = "image_folder"
    config.data.path = root
    config.data.image_size = FLAGS.image_size
    iterator = data.create_train_iterator(config, global_batch_size=FLAGS.batch_size,
                                          process_index=0, process_count=1)
    for _ in range(2):
      next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.batches):
      batch = next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  images = FLAGS.batches * FLAGS.batch_size
  print(f"{FLAGS.num_images} JPEGs, {size_bytes / FLAGS.num_images / 1e3:.0f} kB average, "
        f"500x375 / 375x500 -> {batch['image'].shape[1:]} batches of {FLAGS.batch_size}, "
        f"{os.cpu_count()} cores")
  print(f"images_per_s={images / wall:.1f} (wall) images_per_cpu_s={images / cpu:.1f} "
        f"(per core: {images} images / {cpu:.2f} CPU-s of this process)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
