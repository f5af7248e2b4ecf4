"""RandAugment and random erasing as stateless TensorFlow ops of the tf.data train pipeline.

Both follow timm (github.com/huggingface/pytorch-image-models), whose transforms MAE's
fine-tuning recipe uses (facebookresearch/mae main_finetune.py: `create_transform(...,
auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, re_mode='pixel', re_count=1)`):

  RandAugment (timm/data/auto_augment.py `rand_augment_transform`, `RandAugment`,
  `AugmentOp`) on the uint8 image: `num_layers` times, one of the 15 ops of timm's
  `_RAND_INCREASING_TRANSFORMS` (`RAND_INCREASING_OPS`) is picked uniformly, with
  replacement; it fires with probability `prob`; its magnitude is N(m, mstd) clipped to
  [0, 10] (`_LEVEL_DENOM`), drawn afresh for each layer; the op's level function turns
  the magnitude into its argument, with a random sign for the signed ones. Each op gives
  the integer result of the PIL call timm makes (ImageOps, ImageEnhance, Image.transform).
  Geometric ops fill with timm's `img_mean` (`fill_color`) and resample like PIL with
  config.data.interpolation (timm's `aa_params['interpolation']`).

  Random erasing (timm/data/random_erasing.py `RandomErasing`) on the normalised image.

RandAugment images are float32 [H, W, 3] holding the integer levels 0..255 that PIL holds
as uint8. Every draw is a `tf.random.stateless_*` op keyed by the int64 [2] key passed in,
so an output is a pure function of (image, key).
"""
import dataclasses
import functools
import math
import re
from typing import Optional

import tensorflow as tf

RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")
ERASING_MODES = ("pixel", "rand", "const")
_LEVEL_DENOM = 10.0
_SPEC_SECTION = re.compile(r"([a-z]+)(\d+(?:\.\d+)?)")
_SPEC_FORM = ("a timm RandAugment spec 'rand-m<int>[-n<int>][-mstd<float>][-p<float>]-inc1', "
              "e.g. 'rand-m9-mstd0.5-inc1' (MAE fine-tuning), or '' for none")
_ERASING_ATTEMPTS = 10
_ERASING_AREA = (0.02, 1 / 3)
_ERASING_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


# --- the spec -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """timm's `rand_augment_transform` settings; defaults are timm's."""
  magnitude: int = 10
  num_layers: int = 2
  magnitude_std: float = 0.0
  prob: float = 0.5


def parse_randaugment(spec: str) -> Optional[RandAugmentSpec]:
  """config.data.randaugment -> RandAugmentSpec, None for ''.

  Reads timm's 'rand-...' sections m (magnitude), n (layers), mstd (magnitude std), p
  (op probability) and inc1 (the increasing op set, the only one implemented); anything
  else is a ValueError naming the field (timm would skip sections without a number).
  """
  def error(reason):
    return ValueError(f"config.data.randaugment={spec!r}: {reason}. Set it to {_SPEC_FORM}.")

  if not isinstance(spec, str):
    raise error("not a string")
  if not spec:
    return None
  head, *sections = spec.split("-")
  if head != "rand":
    raise error("it must start with 'rand-' (only RandAugment is implemented)")
  values = {}
  for section in sections:
    match = _SPEC_SECTION.fullmatch(section)
    if not match or match[1] not in ("m", "n", "mstd", "p", "inc"):
      raise error(f"cannot use section {section!r} (known: m, n, mstd, p, inc)")
    if match[1] in values:
      raise error(f"{match[1]!r} is given twice")
    values[match[1]] = match[2]
  if values.get("inc") != "1":
    raise error("only timm's increasing op set is implemented: it needs '-inc1'")
  for key in ("m", "n"):
    if key in values and not values[key].isdigit():
      raise error(f"{key!r} takes an integer, got {values[key]!r}")
  result = RandAugmentSpec(magnitude=int(values.get("m", 10)),
                           num_layers=int(values.get("n", 2)),
                           magnitude_std=float(values.get("mstd", 0.0)),
                           prob=float(values.get("p", 0.5)))
  if result.num_layers < 1:
    raise error("'n' (ops per image) must be at least 1")
  if result.magnitude_std > 100:
    raise error("'mstd' over 100 (timm: uniform magnitudes) is not implemented")
  if result.prob > 1:
    raise error("'p' (op probability) must be at most 1")
  return result


def fill_color(mean) -> tuple:
  """timm transforms_factory's `img_mean`: the per-channel mean as 0..255 levels."""
  return tuple(min(255, round(255 * m)) for m in mean)


# --- point and histogram ops (PIL ImageOps) -------------------------------------------

def _per_channel_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """image [H, W, 3] levels, lut [3, 256] -> lut[c, image[..., c]] as float32."""
  index = tf.cast(image, tf.int32) + tf.range(3) * 256
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.float32)


def _histograms(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] levels -> int32 [3, 256] per-channel counts (PIL `Image.histogram`)."""
  index = tf.reshape(tf.cast(image, tf.int32) + tf.range(3) * 256, [-1])
  return tf.reshape(tf.math.bincount(index, minlength=768, maxlength=768), [3, 256])


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.autocontrast` (timm `auto_contrast`): per channel with levels lo..hi,
  lut[i] = int(i·s − lo·s), s = 255 / (hi − lo), in float64 like PIL's Python, clipped
  to 0..255; a constant channel stays."""
  pixels = tf.reshape(image, [-1, 3])
  low = tf.cast(tf.reduce_min(pixels, axis=0), tf.float64)[:, None]  # [3, 1]
  high = tf.cast(tf.reduce_max(pixels, axis=0), tf.float64)[:, None]
  scale = 255.0 / tf.where(high > low, high - low, 1.0)
  levels = tf.range(256, dtype=tf.float64)[None]  # [1, 256]
  stretched = tf.clip_by_value(tf.math.floor(levels * scale + -low * scale), 0.0, 255.0)
  lut = tf.where(high > low, stretched, levels)  # [3, 256]; floor = int() once clipped at 0
  return _per_channel_lut(image, tf.cast(lut, tf.int32))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.equalize` (timm `equalize`): per channel, step = (n − count of the top
  level present) // 255 and lut[i] = (step // 2 + #pixels below i) // step, which PIL's
  `point` clips to 255; step 0 (e.g. one level only) keeps the channel."""
  counts = _histograms(image)  # [3, 256]
  top = 255 - tf.argmax(tf.reverse(tf.cast(counts > 0, tf.int32), [1]), axis=1,
                        output_type=tf.int32)  # [3] highest level present
  top_count = tf.gather(counts, top, batch_dims=1)
  step = (tf.reduce_sum(counts, axis=1) - top_count) // 255  # [3]
  below = tf.cumsum(counts, axis=1, exclusive=True)  # [3, 256]
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((safe_step // 2 + below) // safe_step, 255)
  lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None])
  return _per_channel_lut(image, lut)


def invert(image: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.invert` (timm `invert`): 255 − x."""
  return 255.0 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """PIL `ImageOps.posterize` (timm `posterize`): keep the top `bits` bits, x & ~(2^(8 −
  bits) − 1). bits = 0 gives black, as PIL did when MAE ran (Pillow ≥ 10 rejects 0)."""
  step = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
  return tf.floor(image / step) * step


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """PIL `ImageOps.solarize` (timm `solarize`): x < threshold ? x : 255 − x."""
  return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image: tf.Tensor, addition, threshold=128) -> tf.Tensor:
  """timm `solarize_add` (a PIL `point` lut): x < threshold ? min(255, x + addition) : x."""
  added = tf.minimum(image + tf.cast(addition, tf.float32), 255.0)
  return tf.where(image < tf.cast(threshold, tf.float32), added, image)


# --- enhance ops (PIL ImageEnhance: Image.blend(degenerate, image, factor)) -----------

def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL `Image.blend` on uint8: trunc(a + f·(b − a)) in float32 (f a C float), clipped."""
  factor = tf.cast(factor, tf.float32)
  return tf.clip_by_value(tf.math.floor(degenerate + factor * (image - degenerate)), 0.0,
                          255.0)  # floor = C's truncation once clipped at 0


def _grey(image: tf.Tensor) -> tf.Tensor:
  """PIL `convert('L')`: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as [H, W, 1] float32."""
  pixels = tf.cast(image, tf.int32)
  weighted = tf.reduce_sum(pixels * tf.constant([19595, 38470, 7471]), axis=-1, keepdims=True)
  return tf.cast(tf.bitwise.right_shift(weighted + 32768, 16), tf.float32)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Color` (timm `color`): blend from the grey image."""
  return _blend(tf.broadcast_to(_grey(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Contrast` (timm `contrast`): blend from a constant image at the
  grey image's mean, int(mean + 0.5)."""
  mean = tf.floor(tf.reduce_mean(tf.cast(_grey(image), tf.float64)) + 0.5)
  return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Brightness` (timm `brightness`): blend from black."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Sharpness` (timm `sharpness`): blend from PIL's `ImageFilter.SMOOTH`
  (3×3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded; the 1-pixel border copied)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])  # [3, 3, 3 channels, 1]
  sums = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]  # [H-2, W-2, 3]
  smooth = tf.pad(tf.floor(sums / 13.0 + 0.5), [[1, 1], [1, 1], [0, 0]])  # [H, W, 3]
  shape = tf.shape(image)
  interior = tf.pad(tf.ones(shape[:2] - 2, tf.bool), [[1, 1], [1, 1]])  # [H, W]
  return _blend(tf.where(interior[..., None], smooth, image), image, factor)


# --- geometric ops (PIL Image.transform(size, AFFINE, matrix, resample, fillcolor)) ---
#
# PIL reads output pixel (x, y) at the source point (a·(x + ½) + b·(y + ½) + c, d·(x + ½) +
# e·(y + ½) + f) of the matrix (a, b, c, d, e, f), pixel centres at +½ (Geometry.c
# `affine_transform`). Points outside [0, W) × [0, H) take the fill colour; the others
# interpolate the edge-clamped neighbours with PIL's transform kernels, 'bicubic' (cubic
# convolution with a = −1 on 4×4 pixels; PIL's resize uses −0.5) or 'bilinear' (2×2),
# rows first, and truncate to an integer level. Everything here is float64 in PIL's
# operation order, so the levels are PIL's.

def _float64(value) -> tf.Tensor:
  """`value` as float64; Python floats convert directly, not through float32."""
  if isinstance(value, tf.Tensor):
    return tf.cast(value, tf.float64)
  return tf.constant(value, tf.float64)


def _bicubic(taps: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
  """PIL Geometry.c `BICUBIC` (cubic convolution, a = −1) over 4 taps on axis -2."""
  v1, v2, v3, v4 = tf.unstack(taps, axis=-2)
  return v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * (-v1 + v2 - v3 + v4)))


def _bilinear(taps: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
  """PIL Geometry.c `BILINEAR` over 2 taps on axis -2."""
  v1, v2 = tf.unstack(taps, axis=-2)
  return v1 + (v2 - v1) * d


_RESAMPLERS = {"bicubic": (_bicubic, (-1, 0, 1, 2)), "bilinear": (_bilinear, (0, 1))}


def _interpolate_rows(image: tf.Tensor, x_in: tf.Tensor, fill, interpolation: str):
  """PIL's transform where output pixel (x, y) reads the source point (x_in[y, x], y + ½)
  of its own row: PIL's vertical pass then returns that row's value (dy = 0 exactly), so
  4 (or 2) taps per pixel suffice."""
  combine, offsets = _RESAMPLERS[interpolation]
  width = tf.shape(image)[1]
  inside = (x_in >= 0) & (x_in < tf.cast(width, tf.float64))  # [H, W]
  x0 = tf.floor(x_in - 0.5)
  cols = tf.clip_by_value(tf.cast(x0, tf.int32)[..., None] + offsets, 0, width - 1)  # [H, W, K]
  taps = tf.gather(tf.cast(image, tf.float64), cols, batch_dims=1)  # [H, W, K, 3]
  value = combine(taps, (x_in - 0.5 - x0)[..., None])  # [H, W, 3]
  value = tf.cast(tf.floor(tf.clip_by_value(value, 0.0, 255.0)), tf.float32)
  return tf.where(inside[..., None], value, tf.constant(fill, tf.float32))


def affine(image: tf.Tensor, matrix, fill, interpolation: str = "bicubic") -> tf.Tensor:
  """PIL `Image.transform(size, Image.AFFINE, matrix, resample, fillcolor=fill)`, as
  described above this function: 16 (or 4) taps per pixel."""
  combine, offsets = _RESAMPLERS[interpolation]
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  a, b, c, d, e, f = tf.unstack(_float64(matrix))
  ys = tf.cast(tf.range(height), tf.float64)[:, None] + 0.5  # [H, 1]
  xs = tf.cast(tf.range(width), tf.float64)[None, :] + 0.5  # [1, W]
  x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f  # [H, W] source points
  inside = ((x_in >= 0) & (x_in < tf.cast(width, tf.float64)) & (y_in >= 0)
            & (y_in < tf.cast(height, tf.float64)))
  x0, y0 = tf.floor(x_in - 0.5), tf.floor(y_in - 0.5)
  cols = tf.clip_by_value(tf.cast(x0, tf.int32)[..., None] + offsets, 0, width - 1)  # [H, W, K]
  rows = tf.clip_by_value(tf.cast(y0, tf.int32)[..., None] + offsets, 0, height - 1)
  taps = tf.gather(tf.reshape(tf.cast(image, tf.float64), [-1, 3]),
                   rows[..., :, None] * width + cols[..., None, :])  # [H, W, K rows, K cols, 3]
  value = combine(taps, (x_in - 0.5 - x0)[..., None, None])  # [H, W, K rows, 3]
  value = combine(value, (y_in - 0.5 - y0)[..., None])  # [H, W, 3]
  value = tf.cast(tf.floor(tf.clip_by_value(value, 0.0, 255.0)), tf.float32)
  return tf.where(inside[..., None], value, tf.constant(fill, tf.float32))


def _source_x(image: tf.Tensor, shift, slope) -> tf.Tensor:
  """x_in = 1·(x + ½) + slope·(y + ½) + shift, PIL's sum for a matrix (1, slope, shift,
  0, 1, 0) (a zero slope or shift adds exactly 0): float64 [H, W]."""
  shape = tf.shape(image)
  ys = tf.cast(tf.range(shape[0]), tf.float64)[:, None] + 0.5  # [H, 1]
  xs = tf.cast(tf.range(shape[1]), tf.float64)[None, :] + 0.5  # [1, W]
  return xs + _float64(slope) * ys + _float64(shift)


def _transposed(op, image: tf.Tensor) -> tf.Tensor:
  """op on the image with rows and columns swapped, swapped back: [H, W, 3]."""
  return tf.transpose(op(tf.transpose(image, [1, 0, 2])), [1, 0, 2])


def rotate(image: tf.Tensor, degrees, fill, interpolation: str = "bicubic") -> tf.Tensor:
  """PIL `Image.rotate(degrees, resample, fillcolor=fill)` (timm `rotate`): counter-
  clockwise about the image centre (W/2, H/2), through PIL's inverse affine matrix (PIL
  rounds its cos and sin to 15 decimals, a 1e-16 difference this skips)."""
  shape = tf.cast(tf.shape(image), tf.float64)
  cx, cy = shape[1] / 2.0, shape[0] / 2.0
  angle = -_float64(degrees) * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  matrix = [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]
  return affine(image, tf.stack(matrix), fill, interpolation)


def shear_x(image: tf.Tensor, factor, fill, interpolation: str = "bicubic") -> tf.Tensor:
  """timm `shear_x`: affine (1, factor, 0, 0, 1, 0)."""
  return _interpolate_rows(image, _source_x(image, 0.0, factor), fill, interpolation)


def shear_y(image: tf.Tensor, factor, fill, interpolation: str = "bicubic") -> tf.Tensor:
  """timm `shear_y`: affine (1, 0, 0, factor, 1, 0), i.e. shear_x of the transpose."""
  return _transposed(lambda t: shear_x(t, factor, fill, interpolation), image)


def translate_x_rel(image: tf.Tensor, fraction, fill,
                    interpolation: str = "bicubic") -> tf.Tensor:
  """timm `translate_x_rel`: affine (1, 0, fraction·W, 0, 1, 0) (content moves left)."""
  pixels = _float64(fraction) * tf.cast(tf.shape(image)[1], tf.float64)
  return _interpolate_rows(image, _source_x(image, pixels, 0.0), fill, interpolation)


def translate_y_rel(image: tf.Tensor, fraction, fill,
                    interpolation: str = "bicubic") -> tf.Tensor:
  """timm `translate_y_rel`: affine (1, 0, 0, 0, 1, fraction·H) (content moves up)."""
  return _transposed(lambda t: translate_x_rel(t, fraction, fill, interpolation), image)


# --- level functions: magnitude (float64, 0..10) -> op argument (timm `*_level_to_arg`) --

def _signed(value, negate):
  """timm `_randomly_negate`, with the coin `negate` drawn by the caller."""
  return tf.where(negate, -value, value)


def rotate_level(magnitude, negate):
  """timm `_rotate_level_to_arg`: ±30° · m/10."""
  return _signed(magnitude / _LEVEL_DENOM * 30.0, negate)


def shear_level(magnitude, negate):
  """timm `_shear_level_to_arg`: ±0.3 · m/10."""
  return _signed(magnitude / _LEVEL_DENOM * 0.3, negate)


def translate_rel_level(magnitude, negate):
  """timm `_translate_rel_level_to_arg`: ±0.45 · m/10 of the image size (translate_pct)."""
  return _signed(magnitude / _LEVEL_DENOM * 0.45, negate)


def enhance_increasing_level(magnitude, negate):
  """timm `_enhance_increasing_level_to_arg`: max(0.1, 1 ± 0.9 · m/10)."""
  return tf.maximum(tf.constant(0.1, magnitude.dtype),
                    1.0 + _signed(magnitude / _LEVEL_DENOM * 0.9, negate))


def posterize_increasing_level(magnitude):
  """timm `_posterize_increasing_level_to_arg`: 4 − int(4 · m/10) bits kept."""
  return 4 - tf.cast(tf.floor(magnitude / _LEVEL_DENOM * 4), tf.int32)


def solarize_increasing_level(magnitude):
  """timm `_solarize_increasing_level_to_arg`: threshold 256 − min(256, int(256 · m/10))."""
  return 256 - tf.minimum(256, tf.cast(tf.floor(magnitude / _LEVEL_DENOM * 256), tf.int32))


def solarize_add_level(magnitude):
  """timm `_solarize_add_level_to_arg`: add min(128, int(110 · m/10)) below 128."""
  return tf.minimum(128, tf.cast(tf.floor(magnitude / _LEVEL_DENOM * 110), tf.int32))


def apply_op(name: str, image: tf.Tensor, magnitude, negate, fill,
             interpolation: str = "bicubic") -> tf.Tensor:
  """timm `AugmentOp` named `name` at `magnitude` (already clipped) with sign coin
  `negate`: its level function, then its op."""
  magnitude = _float64(magnitude)
  geometric = {"Rotate": (rotate, rotate_level), "ShearX": (shear_x, shear_level),
               "ShearY": (shear_y, shear_level),
               "TranslateXRel": (translate_x_rel, translate_rel_level),
               "TranslateYRel": (translate_y_rel, translate_rel_level)}
  if name in geometric:
    op, level = geometric[name]
    return op(image, level(magnitude, negate), fill, interpolation)
  enhance = {"ColorIncreasing": color, "ContrastIncreasing": contrast,
             "BrightnessIncreasing": brightness, "SharpnessIncreasing": sharpness}
  if name in enhance:
    return enhance[name](image, enhance_increasing_level(magnitude, negate))
  return {"AutoContrast": lambda: auto_contrast(image),
          "Equalize": lambda: equalize(image),
          "Invert": lambda: invert(image),
          "PosterizeIncreasing": lambda: posterize(image, posterize_increasing_level(magnitude)),
          "SolarizeIncreasing": lambda: solarize(image, solarize_increasing_level(magnitude)),
          "SolarizeAdd": lambda: solarize_add(image, solarize_add_level(magnitude)),
          }[name]()


# --- the policy ------------------------------------------------------------------------

def randaugment_draws(key: tf.Tensor, spec: RandAugmentSpec):
  """Per layer [n]: op index into RAND_INCREASING_OPS (int32, uniform), fires (bool,
  probability spec.prob), magnitude (float64, N(m, mstd) clipped to [0, 10]) and the
  level's sign coin negate (bool, timm: random() > 0.5)."""
  op_key, fire_key, magnitude_key, sign_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4))
  n = [spec.num_layers]
  op = tf.random.stateless_uniform(n, op_key, 0, len(RAND_INCREASING_OPS), tf.int32)
  fires = tf.random.stateless_uniform(n, fire_key) < spec.prob
  magnitude = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal(
      n, magnitude_key, dtype=tf.float64)
  magnitude = tf.clip_by_value(magnitude, 0.0, _LEVEL_DENOM)
  negate = tf.random.stateless_uniform(n, sign_key) > 0.5
  return op, fires, magnitude, negate


@functools.lru_cache(maxsize=None)
def _layer(fill: tuple, interpolation: str):
  """One RandAugment layer, image [H, W, 3] -> [H, W, 3]: the op of index (0..14) at
  (magnitude, negate), 15 = identity; a `tf.switch_case`, so only that op runs. Traced
  once per (fill, interpolation), then called from every view's graph."""
  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([], tf.int32),
      tf.TensorSpec([], tf.float64), tf.TensorSpec([], tf.bool)])
  def layer(image, index, magnitude, negate):
    def branch(name):
      return lambda: apply_op(name, image, magnitude, negate, fill, interpolation)

    return tf.switch_case(index, [branch(name) for name in RAND_INCREASING_OPS]
                          + [lambda: image])

  return layer


@tf.autograph.experimental.do_not_convert
def randaugment(image: tf.Tensor, key: tf.Tensor, spec: RandAugmentSpec, fill,
                interpolation: str = "bicubic") -> tf.Tensor:
  """timm `RandAugment` on a [H, W, 3] image of integer levels: the layers of
  `randaugment_draws(key, spec)` in order (a layer that does not fire is the identity)."""
  op, fires, magnitude, negate = randaugment_draws(key, spec)
  layer = _layer(tuple(fill), interpolation)
  for i in range(spec.num_layers):
    index = tf.where(fires[i], op[i], len(RAND_INCREASING_OPS))
    image = tf.ensure_shape(layer(image, index, magnitude[i], negate[i]), image.shape)
  return image


# --- random erasing --------------------------------------------------------------------

def erasing_boxes(key: tf.Tensor, height, width, probability: float, count: int = 1):
  """timm `RandomErasing._erase`'s boxes: int32 [count, 4] (top, left, h, w) and bool
  [count] erased.

  With probability `probability` the image gets n boxes (n = count, or uniform in
  1..count when count > 1); each tries up to 10 times an area fraction U(0.02, 1/3) / n
  and a log-uniform aspect h/w in [0.3, 1/0.3], h and w rounded; the first with h < H and
  w < W is placed uniformly (top in 0..H − h, left in 0..W − w), else that box is skipped.
  """
  fire_key, count_key, box_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
  fires = tf.random.stateless_uniform([], fire_key) < probability
  n = (tf.random.stateless_uniform([], count_key, 1, count + 1, tf.int32) if count > 1
       else tf.constant(count))
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  boxes, erased = [], []
  for box in range(count):
    area_key, aspect_key, top_key, left_key = tf.unstack(
        tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(
            box_key, box), 4))
    area = tf.random.stateless_uniform([_ERASING_ATTEMPTS], area_key, *_ERASING_AREA)
    area *= tf.cast(height * width, tf.float32) / tf.cast(n, tf.float32)
    aspect = tf.exp(tf.random.stateless_uniform([_ERASING_ATTEMPTS], aspect_key,
                                                *_ERASING_LOG_ASPECT))
    h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # [attempts]
    w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (h < height) & (w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h, w = h[first], w[first]
    top = tf.random.stateless_uniform([], top_key, 0, tf.maximum(height - h + 1, 1), tf.int32)
    left = tf.random.stateless_uniform([], left_key, 0, tf.maximum(width - w + 1, 1), tf.int32)
    boxes.append(tf.stack([top, left, h, w]))
    erased.append(fires & (box < n) & tf.reduce_any(fits))
  return tf.stack(boxes), tf.stack(erased)


@tf.autograph.experimental.do_not_convert
def random_erasing(image: tf.Tensor, key: tf.Tensor, probability: float,
                   mode: str = "pixel", count: int = 1) -> tf.Tensor:
  """timm `RandomErasing(probability, mode=mode, max_count=count)` on a normalised
  [H, W, C] image: the boxes of `erasing_boxes`, later ones over earlier ones, filled
  with N(0, 1) per pixel and channel ('pixel'), per channel ('rand') or 0 ('const')."""
  shape = tf.shape(image)
  boxes, erased = erasing_boxes(key, shape[0], shape[1], probability, count)
  rows, cols = tf.range(shape[0])[:, None], tf.range(shape[1])[None, :]
  for box in range(count):
    def erase(image=image, box=box):
      top, left, h, w = tf.unstack(boxes[box])
      inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # [H, W]
      fill_key = tf.random.experimental.stateless_fold_in(key, box)
      if mode == "pixel":
        fill = tf.random.stateless_normal(shape, fill_key)
      elif mode == "rand":
        fill = tf.random.stateless_normal(shape[2:], fill_key)
      else:
        fill = tf.zeros([], image.dtype)
      return tf.where(inside[..., None], fill, image)

    image = tf.cond(erased[box], erase, lambda image=image: image)  # draws noise only if erased
  return image
