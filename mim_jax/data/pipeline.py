"""tf.data train and eval pipelines: deterministic, exactly resumable, split over processes.

Train elements are numbered t = 0, 1, 2, ... per process. With B = global_batch_size and
b = B / process_count, the t-th element of process p is element T = (t // b)·B + p·b +
t % b of one global stream: step k's global batch is elements k·B ... k·B + B − 1,
process p holding its p-th slice. Random-access sources (synthetic, npz, image_folder)
hold the whole split in every process; element T is example
`index_shuffle(T % size, key(seed, T // size))` of the split (a fresh permutation per
epoch) and its crops and flips come from stateless ops keyed by (seed, T). The global
batch of every step is thus the same however many processes share it. tfds streams one
file shard per process (`tfds.split_for_jax_process`), its epochs t // shard_size
permuted window by window with a key of (seed, process, epoch); its augmentation is
keyed by (seed, T) too. Starting at step k starts the counter at k·b and never reads the
skipped examples (tfds: reads but does not decode the rest of the current epoch's
skipped examples).
"""
import functools
import math
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from mim_jax.data import augment, sources
from mim_jax.data.config import IMAGENET_MEAN, IMAGENET_STD

_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2
_RANDAUGMENT_STREAM, _ERASING_STREAM = 3, 4  # folded into an element's augmentation key
_STREAMED_SOURCES = ("tfds",)  # one file shard per process; the others hold every example
_CROP_ATTEMPTS = 10
_NAMED_SKIPS = 5  # unreadable image files named in the log; later ones are counted
_INTERPOLATIONS = {"bicubic": tf.image.ResizeMethod.BICUBIC,
                   "bilinear": tf.image.ResizeMethod.BILINEAR}


def _hide_gpus_from_tf():
  """Keeps TF off the accelerators, which belong to JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF's devices were already initialised
    pass


_hide_gpus_from_tf()


def _require_multiple(global_batch_size: int, count: int, what: str, field: str) -> None:
  if global_batch_size % count:
    lower = global_batch_size // count * count
    example = f"{lower} or {lower + count}" if lower else f"{count}"
    raise ValueError(f"{field}={global_batch_size} (the global batch) is not divisible by "
                     f"the {count} {what}: set it to a multiple of {count} (e.g. {example}).")


def check_batch_size(global_batch_size: int, num_devices: int, process_count: int,
                     field: str = "config.batch_size") -> None:
  """ValueError naming `field` unless the global batch splits evenly over devices and
  processes."""
  if global_batch_size <= 0:
    raise ValueError(f"{field} must be positive, got {global_batch_size}.")
  _require_multiple(global_batch_size, num_devices, "devices", field)
  _require_multiple(global_batch_size, process_count, "processes", field)


def _process_info(process_index: Optional[int], process_count: Optional[int]):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  check_batch_size(global_batch_size, num_devices=1, process_count=process_count,
                   field="global_batch_size")
  return global_batch_size // process_count


def _form_error(name: str, value, form: str, example: str) -> ValueError:
  return ValueError(f"config.data.{name}={value!r} must be {form}, e.g. "
                    f"--config.data.{name}='{example}'.")


def check_config(config) -> None:
  """ValueError naming the config.data field whose value the pipeline cannot use."""
  data = config.data
  sources.check_source(config)
  if data.interpolation not in _INTERPOLATIONS:
    raise ValueError(f"config.data.interpolation={data.interpolation!r}: set it to one of "
                     f"{tuple(_INTERPOLATIONS)}.")
  if data.image_size <= 0:
    raise ValueError(f"config.data.image_size must be positive, got {data.image_size}.")
  for name, example in (("crop_scale", "(0.2, 1.0)"), ("crop_ratio", "(0.75, 1.333)")):
    value = data[name]
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) for v in value) and 0 < value[0] <= value[1]):
      raise _form_error(name, value, "a pair (low, high) with 0 < low <= high", example)
  for name, example in (("mean", str(IMAGENET_MEAN)), ("std", str(IMAGENET_STD))):
    value = data[name]
    if not (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, (int, float)) for v in value)
            and (name == "mean" or min(value) > 0)):
      raise _form_error(name, value, "3 per-channel values" + (" > 0" if name == "std" else ""),
                        example)
  augment.parse_randaugment(data.get("randaugment", ""))
  prob = data.get("random_erasing_prob", 0.0)
  if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
    raise ValueError(f"config.data.random_erasing_prob={prob!r} must be a probability in "
                     "[0, 1]: 0 turns random erasing off, MAE fine-tuning uses 0.25.")
  mode = data.get("random_erasing_mode", "pixel")
  if mode not in augment.ERASING_MODES:
    raise ValueError(f"config.data.random_erasing_mode={mode!r}: set it to one of "
                     f"{augment.ERASING_MODES} ('pixel' in MAE fine-tuning).")
  count = data.get("random_erasing_count", 1)
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"config.data.random_erasing_count={count!r} must be an integer >= 1 "
                     "(the most boxes per view; MAE fine-tuning uses 1).")


def _fold(key: tf.Tensor, *data) -> tf.Tensor:
  """Stateless key [2] int64 derived from `key` and integers `data`."""
  for value in data:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
  return key


def _stream_key(seed: int, stream: int, *data) -> tf.Tensor:
  return _fold(tf.constant([seed, stream], tf.int64), *data)


def _global_element(t: tf.Tensor, local_batch: int, process_index: int,
                    process_count: int) -> tf.Tensor:
  """Position in the global element stream of this process's element t (module docstring)."""
  return ((t // local_batch) * (local_batch * process_count) + process_index * local_batch
          + t % local_batch)


def random_resized_crop_window(height, width, key, scale, ratio):
  """torchvision `RandomResizedCrop.get_params`: (top, left, crop_height, crop_width).

  Up to 10 attempts draw an area fraction in `scale` and a log-uniform aspect ratio
  (w / h) in `ratio`; the first crop that fits wins, else a central crop with the aspect
  ratio clamped to `ratio`. Stateless in `key`.
  """
  area_key, ratio_key, top_key, left_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4))
  area = tf.cast(height * width, tf.float32)
  target_area = area * tf.random.stateless_uniform([_CROP_ATTEMPTS], area_key, scale[0],
                                                   scale[1])
  aspect = tf.exp(tf.random.stateless_uniform([_CROP_ATTEMPTS], ratio_key, math.log(ratio[0]),
                                              math.log(ratio[1])))
  w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)

  in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
  fallback_w = tf.where(in_ratio > ratio[1],
                        tf.cast(tf.round(tf.cast(height, tf.float32) * ratio[1]), tf.int32), width)
  fallback_h = tf.where(in_ratio < ratio[0],
                        tf.cast(tf.round(tf.cast(width, tf.float32) / ratio[0]), tf.int32), height)
  crop_h = tf.where(found, h[first], fallback_h)
  crop_w = tf.where(found, w[first], fallback_w)
  top = tf.where(found, tf.random.stateless_uniform([], top_key, 0, height - crop_h + 1, tf.int32),
                 (height - crop_h) // 2)
  left = tf.where(found, tf.random.stateless_uniform([], left_key, 0, width - crop_w + 1, tf.int32),
                  (width - crop_w) // 2)
  return top, left, crop_h, crop_w


def _decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/BMP/GIF -> uint8 [H, W, 3] (grey repeated, alpha dropped)."""
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _crop(image: tf.Tensor, window) -> tf.Tensor:
  top, left, h, w = window
  return image[top:top + h, left:left + w]


def _decode_and_crop(data: tf.Tensor, window_fn):
  """Crop window_fn([H, W]) of an encoded image; JPEGs decode only that window.
  Returns (crop, window, [H, W])."""
  def jpeg():
    hw = tf.image.extract_jpeg_shape(data)[:2]
    window = tf.stack(window_fn(hw))
    return tf.image.decode_and_crop_jpeg(data, window, channels=3), window, hw

  def other():
    image = _decode(data)
    hw = tf.shape(image)[:2]
    window = window_fn(hw)
    return _crop(image, window), tf.stack(window), hw

  image, window, hw = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  image.set_shape([None, None, 3])
  return image, tf.unstack(window), hw


def _crop_box(window, hw) -> tf.Tensor:
  """(top, left, h, w) in pixels of an [H, W] image -> float32 [4] (y0, x0, h, w) as
  fractions of H and W."""
  height, width = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
  top, left, h, w = (tf.cast(v, tf.float32) for v in window)
  return tf.stack([top / height, left / width, h / height, w / width])


def _resize(image: tf.Tensor, size_hw, interpolation: str) -> tf.Tensor:
  """float32 resize, antialiased like PIL, clipped to the uint8 range."""
  image = tf.image.resize(image, size_hw, method=_INTERPOLATIONS[interpolation], antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


def _normalize(image: tf.Tensor, config) -> tf.Tensor:
  mean = tf.constant(config.data.mean, tf.float32)
  std = tf.constant(config.data.std, tf.float32)
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def _train_views(image: tf.Tensor, kind: str, key: tf.Tensor, num_views: int, config):
  """`num_views` independently cropped, flipped, normalised views, each [S, S, 3], with
  their crop boxes (float32 [4], see `_crop_box`) and flip flags (bool []).

  With config.data.randaugment, each resized, flipped view is rounded to uint8 levels
  (what timm's PIL image holds) and RandAugmented before normalising; with
  config.data.random_erasing_prob > 0 the normalised view is randomly erased. Their keys
  fold new stream constants into `key`, so the crops and flips stay those of the plain
  pipeline, which both off reproduces bit for bit. The crop box and flip flag describe
  the crop only, not RandAugment's rotations, shears and translations.
  """
  data = config.data
  randaugment = augment.parse_randaugment(data.get("randaugment", ""))
  erasing_prob = data.get("random_erasing_prob", 0.0)
  view_keys = [tf.unstack(tf.random.experimental.stateless_split(view_key, 2))
               for view_key in tf.unstack(tf.random.experimental.stateless_split(key, num_views))]
  crop_keys, flip_keys = zip(*view_keys)

  def window_fn(crop_key):
    return lambda hw: random_resized_crop_window(hw[0], hw[1], crop_key, data.crop_scale,
                                                 data.crop_ratio)

  if kind == "path":
    image, kind = tf.io.read_file(image), "bytes"
  if kind == "bytes" and num_views == 1:
    crop, window, hw = _decode_and_crop(image, window_fn(crop_keys[0]))
    crops, boxes = [crop], [_crop_box(window, hw)]
  else:
    if kind == "bytes":
      image = _decode(image)
    hw = tf.shape(image)[:2]
    windows = [window_fn(k)(hw) for k in crop_keys]
    crops = [_crop(image, window) for window in windows]
    boxes = [_crop_box(window, hw) for window in windows]

  views, flips = [], []
  for index, (crop, flip_key) in enumerate(zip(crops, flip_keys)):
    view = _resize(crop, [data.image_size, data.image_size], data.interpolation)
    flip = tf.constant(False)
    if data.flip:
      flip = tf.random.stateless_uniform([], flip_key) < 0.5
      view = tf.where(flip, tf.reverse(view, axis=[1]), view)
    if randaugment:
      view = augment.randaugment(tf.round(view), _fold(key, _RANDAUGMENT_STREAM, index),
                                 randaugment, augment.fill_color(data.mean), data.interpolation)
    view = _normalize(view, config)
    if erasing_prob > 0:
      view = augment.random_erasing(view, _fold(key, _ERASING_STREAM, index), erasing_prob,
                                    data.get("random_erasing_mode", "pixel"),
                                    data.get("random_erasing_count", 1))
    views.append(view)
    flips.append(flip)
  return views, boxes, flips


def _eval_image(image: tf.Tensor, kind: str, config) -> tf.Tensor:
  """Resize the shorter side (see config.data.eval_crop_fraction), centre crop, normalise."""
  size = config.data.image_size
  if kind == "path":
    image, kind = tf.io.read_file(image), "bytes"
  if kind == "bytes":
    image = _decode(image)
  hw = tf.shape(image)[:2]
  shorter = tf.reduce_min(hw)
  target = tf.where(shorter <= size, size, math.floor(size / config.data.eval_crop_fraction))
  new_hw = tf.maximum(hw * target // shorter, size)
  image = tf.cond(tf.reduce_all(new_hw == hw), lambda: tf.cast(image, tf.float32),
                  lambda: _resize(image, new_hw, config.data.interpolation))
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  image = image[top:top + size, left:left + size]
  image.set_shape([size, size, 3])
  return _normalize(image, config)


def _random_access_elements(shard: sources.Shard, shuffle_key, start: int,
                            global_element) -> tf.data.Dataset:
  """(t, image, label) for t = start, start + 1, ...: global element T = global_element(t)
  of a stream that permutes the whole split afresh each epoch."""
  images, labels = tf.constant(shard.images), tf.constant(shard.labels)
  size = tf.constant(shard.size, tf.int64)

  def lookup(t):
    element = global_element(t)
    index = tf.random.experimental.index_shuffle(element % size,
                                                 _fold(shuffle_key, element // size), size - 1)
    return t, tf.gather(images, index), tf.gather(labels, index)

  return tf.data.Dataset.counter(start=start).map(lookup, num_parallel_calls=tf.data.AUTOTUNE)


def _streamed_elements(shard: sources.Shard, shuffle_key, start: int,
                       window_size: int) -> tf.data.Dataset:
  """(t, image, label) for t = start, ...; each epoch permutes every window of examples."""
  examples = shard.stream()
  window_size = max(1, min(window_size, shard.size))

  def epoch_examples(epoch):
    def shuffle_window(window_index, window):
      count = tf.shape(window["label"], out_type=tf.int64)[0]
      order = tf.random.experimental.index_shuffle(
          tf.range(count), _fold(shuffle_key, epoch, window_index), count - 1)
      return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(
          lambda x: tf.gather(x, order), window))

    return examples.batch(window_size).enumerate().flat_map(shuffle_window)

  ds = tf.data.Dataset.range(start // shard.size, np.iinfo(np.int64).max)
  ds = ds.flat_map(epoch_examples).skip(start % shard.size)
  return ds.enumerate(start=start).map(lambda t, ex: (t, ex["image"], ex["label"]))


def _as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator()


def create_train_iterator(config, *, global_batch_size: int, start_step: int = 0,
                          num_views: int = 1, process_index: Optional[int] = None,
                          process_count: Optional[int] = None,
                          start_element: Optional[int] = None
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Endless augmented batches of this process: {'image', 'crop_box', 'flip', 'label',
  'element'}.

  'image' is float32 [b, S, S, 3], or [b, num_views, S, S, 3] when num_views > 1;
  'label' is int32 [b]; b = global_batch_size // process_count. The crop geometry of
  each view ([b] or [b, num_views] leading dims): 'crop_box' float32 [..., 4] =
  (y0, x0, h, w) of the RandomResizedCrop window as fractions of the source image's
  height and width; 'flip' bool [...], True when the resized crop was mirrored left-right.
  View pixel (i, j) (centre at ((i + .5)/S, (j + .5)/S) of the view) thus shows the source
  point (y0 + h·(i + .5)/S, x0 + w·u) with u = (j + .5)/S, or 1 − (j + .5)/S if flipped
  (before config.data.randaugment's geometric ops and random erasing, which it ignores).
  With start_step=k it yields exactly what a fresh iterator yields from its (k+1)-th
  batch on.
  'element' int64 [b] is each example's position t in this process's element stream;
  the next batch starts at 'element'[-1] + 1, which `start_element` takes to resume
  exactly (it overrides start_step · b). Image-folder files that fail to decode
  (truncated, not an image) are skipped, so there 'element' can jump: the jumps count
  the skipped files.
  """
  process_index, process_count = _process_info(process_index, process_count)
  local_batch = _local_batch_size(global_batch_size, process_count)
  if start_step < 0 or num_views < 1:
    raise ValueError(f"Need start_step >= 0 and num_views >= 1, got {start_step}, {num_views}.")
  check_config(config)
  streamed = sources.check_source(config) in _STREAMED_SOURCES
  shard = sources.open_shard(config, config.data.train_split,
                             *((process_index, process_count) if streamed else (0, 1)))
  start = start_step * local_batch if start_element is None else start_element
  global_element = functools.partial(_global_element, local_batch=local_batch,
                                     process_index=process_index, process_count=process_count)
  if streamed:
    elements = _streamed_elements(shard, _stream_key(config.seed, _SHUFFLE_STREAM, process_index),
                                  start, config.data.shuffle_buffer)
  else:
    elements = _random_access_elements(shard, _stream_key(config.seed, _SHUFFLE_STREAM), start,
                                       global_element)
  augment_key = _stream_key(config.seed, _AUGMENT_STREAM)

  def example(t, image, label):
    views, boxes, flips = _train_views(image, shard.kind, _fold(augment_key, global_element(t)),
                                       num_views, config)
    stack = (lambda x: x[0]) if num_views == 1 else tf.stack
    return {"image": stack(views), "crop_box": stack(boxes), "flip": stack(flips),
            "label": label, "element": t}

  ds = elements.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  batches = _as_numpy(_skip_unreadable(ds, shard.kind).batch(local_batch, drop_remainder=True))
  if shard.kind != "path":
    return batches
  shuffle_key = _stream_key(config.seed, _SHUFFLE_STREAM)

  def path_of(t: int) -> str:
    element = global_element(t)
    index = tf.random.experimental.index_shuffle(
        element % shard.size, _fold(shuffle_key, element // shard.size), shard.size - 1)
    return str(shard.images[int(index)])

  return _report_skipped(batches, "element", start, path_of)


def _skip_unreadable(ds: tf.data.Dataset, kind: str) -> tf.data.Dataset:
  """Image files that fail to read or decode are dropped (`_report_skipped` names them);
  in memory and TFDS sources have no such failures, and errors there stay errors."""
  if kind != "path":
    return ds
  return ds.ignore_errors()


def _report_skipped(batches: Iterator[dict], key: str, start: int,
                    path_of: Callable[[int], str], end: Optional[int] = None,
                    drop_key: bool = False) -> Iterator[dict]:
  """`batches` (without batch[key] if `drop_key`), logging the image files that were
  skipped as unreadable: the gaps in batch[key], which counts up from `start` over every
  example tried (negative: padding) up to `end`. The first few are named, later ones
  counted at 10, 100, 1000, ..."""
  expected, skipped = start, 0

  def report(missing):
    nonlocal skipped
    for index in missing:
      skipped += 1
      if skipped <= _NAMED_SKIPS:
        logging.warning("Skipped image file %s: it cannot be read or decoded.",
                        path_of(int(index)))
      elif math.log10(skipped).is_integer():
        logging.warning("Skipped %d unreadable image files so far (the first %d named above).",
                        skipped, _NAMED_SKIPS)

  for batch in batches:
    ids = batch.pop(key) if drop_key else batch[key]
    ids = ids[ids >= 0]
    if len(ids):
      report(np.setdiff1d(np.arange(expected, ids[-1] + 1), ids))
      expected = int(ids[-1]) + 1
    yield batch
  if end is not None:
    report(range(expected, end))


def create_eval_iterator(config, split: str, *, global_batch_size: int,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None
                         ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's shard of `split`: {'image', 'label', 'valid'}.

  Every process yields the same number of batches of b = global_batch_size //
  process_count; the tail is padded with zero images (label 0) whose 'valid' is False.
  """
  process_index, process_count = _process_info(process_index, process_count)
  local_batch = _local_batch_size(global_batch_size, process_count)
  check_config(config)
  shard = sources.open_shard(config, split, process_index, process_count)
  if shard.random_access:
    ds = tf.data.Dataset.from_tensor_slices({"image": shard.images, "label": shard.labels})
  else:
    ds = shard.stream()
  ds = ds.enumerate().map(
      lambda index, ex: {"image": _eval_image(ex["image"], shard.kind, config),
                         "label": ex["label"], "valid": True, "index": index},
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = _skip_unreadable(ds, shard.kind)
  num_batches = math.ceil(sources.max_shard_size(shard.total, process_count) / local_batch)
  size = config.data.image_size
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros([size, size, 3], tf.float32), "label": tf.constant(0, tf.int32),
      "valid": False, "index": tf.constant(-1, tf.int64)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  batches = _as_numpy(ds.batch(local_batch, drop_remainder=True))
  return _report_skipped(batches, "index", 0, lambda index: str(shard.images[index]),
                         end=shard.size if shard.kind == "path" else None, drop_key=True)

