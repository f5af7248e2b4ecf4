"""Data config: `default_data_config()` and the fields the input pipeline reads.

Top level:
  seed: int. Seeds shuffling, augmentation and the synthetic images.

config.data:
  source: 'synthetic' | 'npz' | 'image_folder' | 'tfds'.
  path: npz file with uint8 NHWC (or NHW) `x_<split>` and int `y_<split>` arrays, or the
    image-folder root `path/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}` (label = index of
    the class folder name in the sorted class names of all splits).
  tfds_name, data_dir: tfds dataset name (e.g. 'imagenet2012') and its data_dir
    (None: the tfds default).
  train_split, eval_split: split names ('train'/'test' for npz and synthetic,
    'train'/'validation' for imagenet2012). tfds accepts sub-splits like 'train[:90%]'.
  image_size: side of the square images the pipeline outputs.
  crop_scale, crop_ratio: RandomResizedCrop area fraction and aspect-ratio ranges.
  flip: random horizontal flip in training.
  (Train batches report each view's geometry as 'crop_box' (y0, x0, h, w), fractions of
  the source image, and 'flip'; see pipeline.create_train_iterator.)
  interpolation: 'bicubic' (MAE) or 'bilinear', antialiased when downscaling.
  eval_crop_fraction: eval resizes the shorter side to floor(image_size / fraction) and
    takes the central image_size crop; images whose shorter side is already at most
    image_size (e.g. 32 px CIFAR at image_size 32) are only resized to image_size.
  mean, std: per-channel normalisation in [0, 1] pixel units.
  randaugment: '' (off) or a timm RandAugment spec 'rand-m<int>[-n<int>][-mstd<float>]
    [-p<float>]-inc1' (MAE fine-tuning: 'rand-m9-mstd0.5-inc1'): n ops (default 2) of
    timm's increasing set per train view, each firing with probability p (0.5) at a
    magnitude N(m, mstd) clipped to [0, 10]; on the resized, flipped view rounded to
    uint8 levels, before normalising; geometric ops fill with the mean colour and
    resample with `interpolation` (see augment.py).
  random_erasing_prob: probability (0.0 = off; MAE fine-tuning 0.25) that a normalised
    train view gets timm's RandomErasing boxes (area 2-33%, aspect 0.3-3.3).
  random_erasing_mode: their fill: 'pixel' (N(0, 1) per pixel and channel, MAE), 'rand'
    (N(0, 1) per channel) or 'const' (0), in normalised units.
  random_erasing_count: boxes per erased view; above 1, uniform in 1..count, each
    with the area divided by that number (timm's max_count).
  (RandAugment's geometric ops and the erased boxes are not part of 'crop_box'/'flip'.)
  shuffle_buffer: tfds only: examples shuffled together within each window of this many
    (the other sources hold every example and shuffle each epoch fully).
  num_classes, synthetic_train_size, synthetic_eval_size: the synthetic source's classes
    and split sizes; its images are drawn at image_size.
"""
import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_data_config() -> ml_collections.ConfigDict:
  """Every field of config.data with its default; the synthetic source needs no files."""
  return ml_collections.ConfigDict({
      "source": "synthetic",
      "path": ml_collections.config_dict.placeholder(str),
      "tfds_name": "imagenet2012",
      "data_dir": ml_collections.config_dict.placeholder(str),
      "train_split": "train",
      "eval_split": "test",
      "image_size": 224,
      "crop_scale": (0.2, 1.0),
      "crop_ratio": (3 / 4, 4 / 3),
      "flip": True,
      "interpolation": "bicubic",
      "eval_crop_fraction": 0.875,
      "mean": IMAGENET_MEAN,
      "std": IMAGENET_STD,
      "randaugment": "",
      "random_erasing_prob": 0.0,
      "random_erasing_mode": "pixel",
      "random_erasing_count": 1,
      "shuffle_buffer": 16_384,
      "num_classes": 10,
      "synthetic_train_size": 10_000,
      "synthetic_eval_size": 2_000,
  })
