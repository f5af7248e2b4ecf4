"""The four data sources, each opened as one process's shard of one split.

A shard lists its examples in a fixed order. Sources with random access (synthetic, npz,
image_folder) hold every example's image (pixels or file path) and label in memory as
NumPy arrays; tfds streams its examples with images left encoded, so that the pipeline
decodes only what it uses. For evaluation, process `i` of `n` owns examples
`i, i + n, i + 2n, ...`; training with random access reads the whole split's index in
every process (one global element stream, see pipeline.create_train_iterator); tfds
always reads `tfds.split_for_jax_process`'s contiguous, evenly sized shard.
"""
import dataclasses
import functools
import math
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mim_jax.data import synthetic

SOURCES = ("synthetic", "npz", "image_folder", "tfds")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_FOLDER_LAYOUT = "a directory holding <split>/<class>/<image files>"


@dataclasses.dataclass(frozen=True)
class Shard:
  """This process's part of one split.

  `kind` says what an image item is: 'pixels' (uint8 [H, W, 3]), 'path' (an image file)
  or 'bytes' (an encoded image). Random-access shards set `images` and `labels`
  ([size, ...] arrays); streaming shards set `stream`, which builds a tf.data.Dataset of
  {'image', 'label'} elements in a fixed order.
  """
  size: int
  total: int
  kind: str
  images: Optional[np.ndarray] = None
  labels: Optional[np.ndarray] = None
  stream: Optional[Callable[[], tf.data.Dataset]] = None

  @property
  def random_access(self) -> bool:
    return self.images is not None


def check_source(config) -> str:
  source = config.data.source
  if source not in SOURCES:
    raise ValueError(f"Unknown data source {source!r}: set config.data.source to one of "
                     f"{SOURCES}.")
  return source


def _split_error(split: str, available) -> ValueError:
  return ValueError(f"Split {split!r} not found (available: {sorted(available)}): set "
                    "config.data.train_split / config.data.eval_split to one of them.")


def _require_path(config, what: str) -> str:
  path = config.data.get("path")
  if not path:
    raise ValueError(f"config.data.source={config.data.source!r} needs config.data.path "
                     f"({what}).")
  if not tf.io.gfile.exists(path):
    raise ValueError(f"config.data.path={path!r} does not exist: set config.data.path to "
                     f"{what}.")
  return path


def _to_rgb(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W], [N, H, W, 1|3|4] -> [N, H, W, 3] (grey repeated, alpha dropped)."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise ValueError(f"npz images must be [N, H, W] or [N, H, W, 1|3|4], got {images.shape}.")
  if images.shape[-1] == 1:
    return np.repeat(images, 3, axis=-1)
  return images[..., :3]


def _synthetic_split_id(config, split: str) -> int:
  splits = {config.data.train_split: 0, config.data.eval_split: 1}
  if split not in splits:
    raise _split_error(split, splits)
  return splits[split]


def _synthetic_size(config, split: str) -> int:
  if _synthetic_split_id(config, split) == 0:
    return config.data.synthetic_train_size
  return config.data.synthetic_eval_size


def _open_synthetic(config, split, process_index, process_count) -> Shard:
  total = _synthetic_size(config, split)
  indices = np.arange(process_index, total, process_count)
  images, labels = synthetic.make_images(
      total, config.data.image_size, config.data.num_classes, config.seed,
      _synthetic_split_id(config, split), indices=indices)
  return Shard(size=len(labels), total=total, kind="pixels", images=images, labels=labels)


_NPZ_FORM = ("x_<split> uint8 images [N, H, W] or [N, H, W, 1|3|4] and y_<split> one "
             "integer label >= 0 per image")


def _load_npz(config, split: str, prefixes=("x", "y"), headers: bool = False) -> list:
  """The arrays `<prefix>_<split>` of the npz file at config.data.path, or with `headers`
  their (shape, dtype) read from the .npy headers without loading the data."""
  path = _require_path(config, "an .npz file with x_<split>, y_<split> arrays")
  with tf.io.gfile.GFile(path, "rb") as f, np.load(f) as data:
    if f"x_{split}" not in data or f"y_{split}" not in data:
      splits = {k[2:] for k in data.files if k.startswith("x_") and f"y_{k[2:]}" in data}
      if splits:
        raise _split_error(split, splits)
      raise ValueError(f"config.data.path={path!r} holds the arrays {sorted(data.files)}; "
                       f"the npz source expects x_{split} (uint8 images) and y_{split} "
                       "(labels) for each split: save the arrays under those names.")
    if headers:
      return [_npy_header(data.zip, f"{prefix}_{split}.npy") for prefix in prefixes]
    try:
      return [data[f"{prefix}_{split}"] for prefix in prefixes]
    except ValueError as e:  # an object array: np.load refuses to unpickle it
      raise ValueError(f"config.data.path={path!r}: {e} Save {_NPZ_FORM}.") from None


def _npy_header(archive, member: str):
  """(shape, dtype) of an .npy member of an npz archive, from its header alone."""
  with archive.open(member) as f:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
  return shape, dtype


def _check_npz_arrays(path: str, split: str, x_shape, x_dtype, labels: np.ndarray) -> None:
  """ValueError unless x is uint8 images and y one integer label >= 0 per image."""
  problem = None
  if x_dtype != np.uint8:
    problem = f"x_{split} is {x_dtype}"
  elif len(x_shape) not in (3, 4) or (len(x_shape) == 4 and x_shape[-1] not in (1, 3, 4)):
    problem = f"x_{split} has shape {tuple(x_shape)}"
  elif not np.issubdtype(labels.dtype, np.integer) or labels.size != x_shape[0]:
    problem = f"y_{split} is {labels.dtype} {labels.shape} for {x_shape[0]} images"
  elif labels.size and labels.min() < 0:
    problem = f"y_{split} has the negative label {labels.min()}"
  if problem:
    raise ValueError(f"config.data.path={path!r}: {problem}; the npz source needs "
                     f"{_NPZ_FORM}.")


def check_split(config, split: str) -> None:
  """ValueError naming the config.data field when `split` of the data cannot be read as
  the source needs it, without reading the images: npz keys, dtype, shape and labels
  (from the arrays' headers; labels loaded), image folders' class folders, a TFDS
  split. For the checks before anything is written."""
  source = check_source(config)
  if source == "npz":
    (x_shape, x_dtype), _ = _load_npz(config, split, headers=True)
    labels = _load_npz(config, split, prefixes=("y",))[0]
    _check_npz_arrays(config.data.path, split, x_shape, x_dtype, labels)
  elif source != "synthetic":
    num_examples(config, split)
  else:
    _synthetic_split_id(config, split)


def _open_npz(config, split, process_index, process_count) -> Shard:
  images, labels = _load_npz(config, split)
  _check_npz_arrays(config.data.path, split, images.shape, images.dtype, labels)
  local_labels = labels.reshape(-1)[process_index::process_count].astype(np.int32)
  return Shard(size=len(local_labels), total=len(images), kind="pixels",
               images=_to_rgb(images[process_index::process_count]), labels=local_labels)


def _subdirs(path: str) -> list:
  return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(path)
                if tf.io.gfile.isdir(os.path.join(path, d)))


def _class_names(root: str) -> list:
  """The class folder names under root/<split>/ of every split, sorted (label order)."""
  return sorted({name for s in _subdirs(root) for name in _subdirs(os.path.join(root, s))})


@functools.lru_cache(maxsize=8)
def _folder_listing(root: str, split: str):
  """(sorted file paths, labels) under root/split/<class>/; classes of all splits, sorted."""
  splits = _subdirs(root)
  if split not in splits:
    raise _split_error(split, splits)
  classes = _class_names(root)
  paths, labels, empty = [], [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(root, split, name)
    if not tf.io.gfile.isdir(class_dir):
      continue
    files = sorted(f for f in tf.io.gfile.listdir(class_dir)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    empty += [] if files else [class_dir]
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  if empty and paths:  # every class folder is a label: an empty one is a class without
    # examples (and shifts the labels of the classes after it)
    raise ValueError(f"Class folders without images ({', '.join(IMAGE_EXTENSIONS)}) in "
                     f"config.data.path={root!r}: {', '.join(empty)}. Each class folder "
                     "becomes a label: add its images or remove the folder.")
  if not paths:
    raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in "
                     f"{os.path.join(root, split)}/<class>/: check config.data.path.")
  return np.array(paths), np.array(labels, np.int32)


def _open_image_folder(config, split, process_index, process_count) -> Shard:
  paths, labels = _folder_listing(_require_path(config, _FOLDER_LAYOUT), split)
  local_paths = paths[process_index::process_count]
  return Shard(size=len(local_paths), total=len(paths), kind="path", images=local_paths,
               labels=labels[process_index::process_count])


def _tfds_builder(config):
  if not config.data.get("tfds_name"):
    raise ValueError("config.data.source='tfds' needs config.data.tfds_name "
                     "(e.g. 'imagenet2012').")
  try:
    return tfds.builder(config.data.tfds_name, data_dir=config.data.get("data_dir"))
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"Unknown TFDS dataset config.data.tfds_name="
                     f"{config.data.tfds_name!r}: set it to a registered name such as "
                     "'imagenet2012' (see tfds.list_builders()).") from None


def _tfds_stream(builder, split) -> tf.data.Dataset:
  """{'image': encoded bytes, 'label': int32} in file order; label -1 if the set has none."""
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  except AssertionError as e:  # tfds's way of saying the data is not there
    raise ValueError(f"{e}\nSet config.data.data_dir to the directory that holds "
                     f"{builder.name}.") from e
  has_label = "label" in builder.info.features
  return ds.map(lambda ex: {
      "image": ex["image"],
      "label": tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32),
  })


def _tfds_size(builder, split) -> int:
  """Examples in `split` from the dataset's metadata, or by counting when it has none."""
  if builder.info.splits:
    try:
      return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise _split_error(str(split), builder.info.splits.keys()) from e
  ds = _tfds_stream(builder, split)
  count = int(ds.cardinality())
  return count if count >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def _open_tfds(config, split, process_index, process_count) -> Shard:
  builder = _tfds_builder(config)
  total = _tfds_size(builder, split)
  process_split = tfds.split_for_jax_process(split, process_index=process_index,
                                             process_count=process_count)
  return Shard(size=_tfds_size(builder, process_split), total=total, kind="bytes",
               stream=lambda: _tfds_stream(builder, process_split))


_OPENERS = {"synthetic": _open_synthetic, "npz": _open_npz,
            "image_folder": _open_image_folder, "tfds": _open_tfds}


def open_shard(config, split: str, process_index: int, process_count: int) -> Shard:
  """Process `process_index`'s shard of `split`; ValueError if it is empty."""
  shard = _OPENERS[check_source(config)](config, split, process_index, process_count)
  if shard.size == 0:
    raise ValueError(f"Split {split!r} of {config.data.source!r} has {shard.total} examples, "
                     f"too few for {process_count} processes.")
  return shard


def num_examples(config, split: str) -> int:
  """Examples in the whole `split` (all processes)."""
  source = check_source(config)
  if source == "synthetic":
    return _synthetic_size(config, split)
  if source == "npz":
    return len(_load_npz(config, split, prefixes=("y",))[0])
  if source == "image_folder":
    return len(_folder_listing(_require_path(config, _FOLDER_LAYOUT), split)[1])
  return _tfds_size(_tfds_builder(config), split)


def num_classes(config) -> int:
  """Classes of the labelled data: the synthetic source's data.num_classes, 1 + the largest
  label of the train and eval splits (npz), the class folders (image_folder), or the
  dataset's label feature (tfds)."""
  source = check_source(config)
  data = config.data
  if source == "synthetic":
    return data.num_classes
  if source == "npz":
    return 1 + max(int(_load_npz(config, split, prefixes=("y",))[0].max())
                   for split in (data.train_split, data.eval_split))
  if source == "image_folder":
    return len(_class_names(_require_path(config, _FOLDER_LAYOUT)))
  features = _tfds_builder(config).info.features
  if "label" not in features:
    raise ValueError(f"TFDS dataset {data.tfds_name!r} has no 'label' feature to classify.")
  return features["label"].num_classes


def max_shard_size(total: int, process_count: int) -> int:
  """Size of the largest process shard (shards differ by at most one example)."""
  return math.ceil(total / process_count)
