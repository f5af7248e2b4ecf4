"""mim_jax/data/augment.py: every RandAugment op against PIL (what timm calls), the level
functions against timm's formulas, the policy's and random erasing's statistics, and the
train pipeline with both on (deterministic, exactly resumable) and off (unchanged)."""
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from conftest import MEAN, ONE_PROCESS, STD, data_config, take, uint8_images, write_npz
from mim_jax import data
from mim_jax.data import augment

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean: round(255 · mean)
RA_SPEC = augment.parse_randaugment("rand-m9-mstd0.5-inc1")


def sample_image(height=29, width=35, seed=0):
  """uint8 [H, W, 3]: red in 30..199, green 0..255, blue skewed towards dark levels."""
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
  image[..., 0] = rng.integers(30, 200, (height, width))
  image[..., 2] = (rng.random((height, width)) ** 3 * 255).astype(np.uint8)
  return image


def ours(fn, image, *args):
  """An augment op on a uint8 array, back as the uint8 levels it produced."""
  out = fn(tf.constant(image, tf.float32), *args).numpy()
  assert (out == np.round(out)).all() and out.min() >= 0 and out.max() <= 255
  return out.astype(np.uint8)


def assert_levels_equal(got, want):
  np.testing.assert_array_equal(got, np.asarray(want))


def test_fill_color_is_timms_img_mean():
  assert augment.fill_color(data.default_data_config().mean) == FILL


# --- ops against PIL ---------------------------------------------------------------------

def equalize_cases():
  """A skewed image; one whose PIL lut passes 255 (counts 200, 150, 50 at levels 0, 10,
  200: step 1, lut[10] = 200, lut[200] = 350 -> 255); one constant image (kept)."""
  over = np.zeros((20, 20, 3), np.uint8)
  over[:15, 10:], over[15:, 10:] = 10, 200
  return [sample_image(), over, np.full((8, 8, 3), 77, np.uint8)]


@pytest.mark.parametrize("case", range(3))
def test_equalize_is_pils(case):
  image = equalize_cases()[case]
  assert_levels_equal(ours(augment.equalize, image), ImageOps.equalize(Image.fromarray(image)))
  if case == 1:
    assert sorted(np.unique(ours(augment.equalize, image))) == [0, 200, 255]


def test_auto_contrast_invert_posterize_solarize_are_pils():
  image = sample_image()
  image[..., 1] = 90  # a constant channel: autocontrast keeps it
  pil = Image.fromarray(image)
  assert_levels_equal(ours(augment.auto_contrast, image), ImageOps.autocontrast(pil))
  stretched = ours(augment.auto_contrast, image)
  assert stretched[..., 0].min() == 0 and stretched[..., 0].max() == 254  # PIL: 254.99999…
  assert_levels_equal(ours(augment.invert, image), ImageOps.invert(pil))
  for bits in (1, 2, 3, 4):
    assert_levels_equal(ours(augment.posterize, image, bits), ImageOps.posterize(pil, bits))
  for threshold in (0, 8, 26, 128, 255, 256):
    assert_levels_equal(ours(augment.solarize, image, threshold),
                        ImageOps.solarize(pil, threshold))


def test_posterize_to_zero_bits_is_black():
  """PIL before 10 (MAE's) computed i & ~(2^8 − 1) = 0; Pillow ≥ 10 rejects bits = 0."""
  assert (ours(augment.posterize, sample_image(), 0) == 0).all()


def test_solarize_add_is_timms_lut():
  levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  for add in (0, 27, 99, 110):
    want = np.where(levels < 128, np.minimum(255, levels.astype(int) + add), levels)
    assert_levels_equal(ours(augment.solarize_add, levels, add), want)


@pytest.mark.parametrize("factor", [0.1, 0.19, 0.55, 1.0, 1.45, 1.81, 1.9])
def test_enhance_ops_are_pils(factor):
  image = sample_image()
  pil = Image.fromarray(image)
  for op, enhancer in ((augment.color, ImageEnhance.Color),
                       (augment.contrast, ImageEnhance.Contrast),
                       (augment.brightness, ImageEnhance.Brightness),
                       (augment.sharpness, ImageEnhance.Sharpness)):
    assert_levels_equal(ours(op, image, factor), enhancer(pil).enhance(factor))


def pil_transform(image, matrix, interpolation):
  resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]
  pil = Image.fromarray(image)
  return pil.transform(pil.size, Image.AFFINE, matrix, resample=resample, fillcolor=FILL)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_shears_and_translations_are_pils(interpolation):
  """Exact: the same float64 arithmetic as PIL's Geometry.c."""
  image = sample_image()
  height, width = image.shape[:2]
  cases = [(augment.shear_x, 0.27, (1, 0.27, 0, 0, 1, 0)),
           (augment.shear_y, -0.21, (1, 0, 0, -0.21, 1, 0)),
           (augment.translate_x_rel, 0.31, (1, 0, 0.31 * width, 0, 1, 0)),
           (augment.translate_y_rel, -0.4, (1, 0, 0, 0, 1, -0.4 * height))]
  for op, argument, matrix in cases:
    got = ours(op, image, argument, FILL, interpolation)
    assert_levels_equal(got, pil_transform(image, matrix, interpolation))
    assert ((got == FILL).all(-1).mean() > 0.05)  # part of the view is the fill colour


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_rotations_are_pils(interpolation):
  """PIL rounds cos and sin to 15 decimals: allow one level on 0.1% of the pixels."""
  image = sample_image()
  resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]
  for degrees in (27.0, -17.1, 3.3):
    got = ours(augment.rotate, image, degrees, FILL, interpolation).astype(int)
    want = np.asarray(Image.fromarray(image).rotate(degrees, resample=resample, fillcolor=FILL))
    off = np.abs(got - want)
    assert off.max() <= 1 and (off > 0).mean() <= 1e-3


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_integer_translations_copy_pixels_and_fill_the_rest(interpolation):
  """A whole-pixel shift samples at pixel centres: nearest neighbour, exactly."""
  image = sample_image(32, 32)
  moved = ours(augment.affine, image, (1.0, 0.0, 5.0, 0.0, 1.0, 0.0), FILL, interpolation)
  assert_levels_equal(moved[:, :27], image[:, 5:])  # content moved left by 5
  assert (moved[:, 27:] == FILL).all()
  moved = ours(augment.translate_y_rel, image, -0.25, FILL, interpolation)  # −8 rows
  assert_levels_equal(moved[8:], image[:-8])
  assert (moved[:8] == FILL).all()


# --- level functions ----------------------------------------------------------------------

MAGNITUDES = [0.0, 2.5, 5.0, 9.0, 9.7, 10.0]
LEVELS = {  # timm's *_level_to_arg at MAGNITUDES, worked out by hand
    "rotate": [0, 7.5, 15, 27, 29.1, 30],  # 30 · m/10
    "shear": [0, 0.075, 0.15, 0.27, 0.291, 0.3],  # 0.3 · m/10
    "translate": [0, 0.1125, 0.225, 0.405, 0.4365, 0.45],  # 0.45 · m/10
    "enhance+": [1, 1.225, 1.45, 1.81, 1.873, 1.9],  # 1 + 0.9 · m/10
    "enhance-": [1, 0.775, 0.55, 0.19, 0.127, 0.1],  # max(0.1, 1 − 0.9 · m/10)
    "posterize": [4, 3, 2, 1, 1, 0],  # 4 − int(4 · m/10)
    "solarize": [256, 192, 128, 26, 8, 0],  # 256 − int(256 · m/10)
    "solarize_add": [0, 27, 55, 99, 106, 110],  # int(110 · m/10)
}


def test_level_functions_are_timms():
  m = tf.constant(MAGNITUDES, tf.float64)
  yes, no = tf.ones_like(m, tf.bool), tf.zeros_like(m, tf.bool)
  for name, fn in (("rotate", augment.rotate_level), ("shear", augment.shear_level),
                   ("translate", augment.translate_rel_level)):
    np.testing.assert_allclose(fn(m, no), LEVELS[name], atol=1e-12)
    np.testing.assert_allclose(fn(m, yes), -np.array(LEVELS[name]), atol=1e-12)
  np.testing.assert_allclose(augment.enhance_increasing_level(m, no), LEVELS["enhance+"],
                             atol=1e-12)
  np.testing.assert_allclose(augment.enhance_increasing_level(m, yes), LEVELS["enhance-"],
                             atol=1e-12)
  assert augment.posterize_increasing_level(m).numpy().tolist() == LEVELS["posterize"]
  assert augment.solarize_increasing_level(m).numpy().tolist() == LEVELS["solarize"]
  assert augment.solarize_add_level(m).numpy().tolist() == LEVELS["solarize_add"]


def timm_op(name, image, magnitude, negate):
  """What timm's AugmentOp does with PIL for a few ops, its level written out."""
  pil, sign = Image.fromarray(image), -1 if negate else 1
  width = image.shape[1]
  if name == "Rotate":
    return pil.rotate(sign * magnitude / 10 * 30, resample=Image.BICUBIC, fillcolor=FILL)
  if name == "TranslateXRel":
    return pil_transform(image, (1, 0, sign * magnitude / 10 * 0.45 * width, 0, 1, 0),
                         "bicubic")
  if name == "ColorIncreasing":
    return ImageEnhance.Color(pil).enhance(max(0.1, 1 + sign * magnitude / 10 * 0.9))
  if name == "PosterizeIncreasing":
    return ImageOps.posterize(pil, 4 - int(magnitude / 10 * 4))
  return ImageOps.solarize(pil, 256 - int(magnitude / 10 * 256))  # SolarizeIncreasing


@pytest.mark.parametrize("name", ["Rotate", "TranslateXRel", "ColorIncreasing",
                                  "PosterizeIncreasing", "SolarizeIncreasing"])
def test_apply_op_is_the_level_then_the_op(name):
  image = sample_image()
  for magnitude, negate in ((9.0, False), (8.6, True)):
    got = ours(lambda im: augment.apply_op(name, im, magnitude, negate, FILL), image)
    want = np.asarray(timm_op(name, image, magnitude, negate)).astype(int)
    assert np.abs(got.astype(int) - want).max() <= (1 if name == "Rotate" else 0)


# --- the policy's statistics ---------------------------------------------------------------

def policy_draws(spec, n):
  """randaugment_draws for keys (i, 7), i < n, as NumPy arrays [n, layers]."""
  ds = tf.data.Dataset.range(n).map(
      lambda i: augment.randaugment_draws(tf.stack([i, tf.constant(7, tf.int64)]), spec))
  return [x.numpy() for x in next(iter(ds.batch(n)))]


def within(value, expected, sigma, sigmas=4):
  assert abs(value - expected) <= sigmas * sigma, (value, expected, sigma)


def binomial_sigma(p, n):
  return math.sqrt(p * (1 - p) / n)


def test_policy_picks_ops_uniformly_fires_half_and_draws_clipped_magnitudes():
  op, fires, magnitude, negate = policy_draws(RA_SPEC, 2000)
  assert op.shape == fires.shape == magnitude.shape == negate.shape == (2000, 2)
  n = op.size  # 4000 layer draws
  counts = np.bincount(op.ravel(), minlength=15)
  assert len(counts) == 15 and counts.min() > 0
  expected = n / 15
  assert ((counts - expected) ** 2 / expected).sum() < 36.1  # chi² 14 dof, p = 0.001
  within(fires.mean(), 0.5, binomial_sigma(0.5, n))
  within(negate.mean(), 0.5, binomial_sigma(0.5, n))
  assert magnitude.min() >= 0 and magnitude.max() == 10.0
  within((magnitude == 10).mean(), 0.02275, binomial_sigma(0.02275, n))  # P(N(9, .5) > 10)
  within(magnitude.mean(), 8.9958, 0.49 / math.sqrt(n))  # E min(N(9, .5), 10)
  assert abs(magnitude.std() - 0.490) < 0.02  # its std
  assert not np.array_equal(op[:, 0], op[:, 1])  # the layers draw independently


def test_policy_clips_both_ends_and_reads_n_and_p():
  spec = augment.parse_randaugment("rand-m5-mstd3-n3-p0.2-inc1")
  op, fires, magnitude, _ = policy_draws(spec, 1500)
  n = magnitude.size
  assert op.shape == (1500, 3) and magnitude.min() == 0 and magnitude.max() == 10
  for end in (0, 10):
    within((magnitude == end).mean(), 0.0478, binomial_sigma(0.0478, n))  # Φ(−5/3)
  within(fires.mean(), 0.2, binomial_sigma(0.2, n))
  fixed = augment.parse_randaugment("rand-m7-inc1")  # mstd 0: the magnitude is m
  assert (policy_draws(fixed, 10)[2] == 7).all()


def test_randaugment_runs_the_drawn_ops_in_order_and_is_deterministic():
  image = tf.constant(sample_image(24, 24), tf.float32)
  run = tf.function(lambda key: augment.randaugment(image, key, RA_SPEC, FILL))
  changed = 0
  for i in range(30):
    key = tf.constant([i, 3], tf.int64)
    got = run(key).numpy()
    want = image
    for op, fires, magnitude, negate in zip(*augment.randaugment_draws(key, RA_SPEC)):
      if fires:
        want = augment.apply_op(augment.RAND_INCREASING_OPS[int(op)], want, magnitude, negate,
                                FILL)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(run(key).numpy(), got)
    changed += not np.array_equal(got, image.numpy())
  assert 15 <= changed <= 28  # no op fires in a quarter of the images


# --- random erasing ---------------------------------------------------------------------------

def box_draws(n, size, probability, count=1):
  ds = tf.data.Dataset.range(n).map(lambda i: augment.erasing_boxes(
      tf.stack([i, tf.constant(5, tf.int64)]), size, size, probability, count))
  boxes, erased = next(iter(ds.batch(n)))
  return boxes.numpy(), erased.numpy()  # [n, count, 4], [n, count]


def ks_uniform(values, low, high):
  """Kolmogorov-Smirnov distance of `values` from U(low, high)."""
  values = np.sort(values)
  cdf = (values - low) / (high - low)
  ranks = np.arange(1, len(values) + 1) / len(values)
  return max(np.abs(cdf - ranks).max(), np.abs(cdf - ranks + 1 / len(values)).max())


def test_erasing_fires_a_quarter_of_the_time_with_timms_box_distribution():
  size, n = 512, 4000
  boxes, erased = box_draws(n, size, 0.25)
  erased, (top, left, h, w) = erased[:, 0], boxes[erased[:, 0], 0].T
  within(erased.mean(), 0.25, binomial_sigma(0.25, n))
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= size).all() and (left + w <= size).all() and (h < size).all()
  area = h * w / size**2
  rounding = (0.5 * (h + w) + 0.25) / size**2  # |h·w − target| from rounding h and w
  assert (area >= 0.02 - rounding).all() and (area <= 1 / 3 + rounding).all()
  small = area < 0.25  # every aspect ratio fits: proposals are never rejected there
  assert ks_uniform(area[small], 0.02, 0.25) < 0.06
  assert ks_uniform(np.log(h / w)[small], math.log(0.3), math.log(1 / 0.3)) < 0.06


def test_erasing_count_splits_the_area_over_a_random_number_of_boxes():
  boxes, erased = box_draws(1500, 256, 1.0, count=3)
  assert erased[:, 0].all()  # the first box always fits
  per_image = erased.sum(1)
  for k in (1, 2, 3):
    within((per_image == k).mean(), 1 / 3, binomial_sigma(1 / 3, 1500))
  h, w = boxes[..., 2], boxes[..., 3]
  three = per_image == 3
  assert (h[three] * w[three] / 256**2 <= 1 / 9 + (0.5 * (h + w)[three] + 0.25) / 256**2).all()


def test_pixel_erasing_fills_the_box_with_unit_normals_and_leaves_the_rest():
  size, n, level = 32, 300, 5.0
  image = tf.fill([size, size, 3], level)

  def erase(i):
    key = tf.stack([i, tf.constant(9, tf.int64)])
    return (augment.random_erasing(image, key, 1.0, "pixel"),
            augment.erasing_boxes(key, size, size, 1.0)[0][0])

  out, boxes = (x.numpy() for x in next(iter(
      tf.data.Dataset.range(n).map(erase).batch(n))))
  inside = []
  for erased, (top, left, h, w) in zip(out, boxes):
    box = np.zeros((size, size), bool)
    box[top:top + h, left:left + w] = True
    assert (erased[~box] == level).all()  # untouched outside the box
    assert (erased[box] != level).all()
    inside.append(erased[box].ravel())
  inside = np.concatenate(inside)
  within(inside.mean(), 0.0, 1 / math.sqrt(len(inside)))
  within(inside.std(), 1.0, 1 / math.sqrt(2 * len(inside)))
  assert len(np.unique(out[0][out[0] != level])) == (out[0] != level).sum()  # per pixel


def test_rand_and_const_modes_and_probability_zero():
  image = tf.fill([32, 32, 3], 5.0)
  key = tf.constant([4, 2], tf.int64)
  rand = augment.random_erasing(image, key, 1.0, "rand").numpy()
  colours = np.unique(rand[(rand != 5).any(-1)], axis=0)
  assert len(colours) == 1 and (colours != 5).all()  # one N(0, 1) colour per box
  const = augment.random_erasing(image, key, 1.0, "const").numpy()
  assert set(np.unique(const)) == {0.0, 5.0}
  assert ((rand != 5).any(-1) == (const == 0).any(-1)).all()  # the same box
  np.testing.assert_array_equal(augment.random_erasing(image, key, 0.0, "pixel"), image)


# --- the spec and the config --------------------------------------------------------------

def test_spec_parsing():
  assert augment.parse_randaugment("") is None
  assert RA_SPEC == augment.RandAugmentSpec(magnitude=9, num_layers=2, magnitude_std=0.5,
                                            prob=0.5)
  assert augment.parse_randaugment("rand-n3-m7-p0.8-inc1") == augment.RandAugmentSpec(
      magnitude=7, num_layers=3, magnitude_std=0.0, prob=0.8)


@pytest.mark.parametrize("field, value", [
    ("randaugment", "rand-m9-mstd0.5"),  # without inc1: timm's other op set
    ("randaugment", "rand-m9-mstd0.5-inc0"),
    ("randaugment", "augmix-m5-inc1"),
    ("randaugment", "rand-m9.5-inc1"),
    ("randaugment", "rand-m9-w0-inc1"),
    ("randaugment", "rand-m9-m8-inc1"),
    ("randaugment", "rand-n0-inc1"),
    ("randaugment", "rand-mstd200-inc1"),
    ("randaugment", "rand-p1.5-inc1"),
    ("randaugment", "rand-m9-inc1-"),
    ("randaugment", 9),
    ("random_erasing_prob", -0.1),
    ("random_erasing_prob", 1.5),
    ("random_erasing_prob", "0.25"),
    ("random_erasing_mode", "noise"),
    ("random_erasing_count", 0),
    ("random_erasing_count", 1.5),
])
def test_bad_fields_name_themselves(field, value):
  config = data_config()
  del config.data[field]  # so that a value of another type gets past the ConfigDict
  config.data[field] = value
  with pytest.raises(ValueError, match=f"config.data.{field}="):
    data.check_config(config)


# --- the train pipeline ---------------------------------------------------------------------

MAE_FINETUNE = {"randaugment": "rand-m9-mstd0.5-inc1", "random_erasing_prob": 0.25}


@pytest.fixture
def npz_path(tmp_path):
  return write_npz(tmp_path / "a.npz", uint8_images(20, size=40))


def batches(config, n, **kwargs):
  return take(data.create_train_iterator(config, global_batch_size=8, **ONE_PROCESS,
                                         **kwargs), n)


def test_off_is_bit_identical_to_the_fields_absent(npz_path):
  config = data_config(source="npz", path=npz_path)
  absent = data_config(source="npz", path=npz_path)
  for name in ("randaugment", "random_erasing_prob", "random_erasing_mode",
               "random_erasing_count"):
    del absent.data[name]
  for got, want in zip(batches(config, 2, num_views=2), batches(absent, 2, num_views=2)):
    for key in ("image", "crop_box", "flip", "label"):
      np.testing.assert_array_equal(got[key], want[key])


def test_randaugment_sees_uint8_levels_and_keeps_the_crops(npz_path):
  off = batches(data_config(source="npz", path=npz_path), 1)[0]
  on = batches(data_config(source="npz", path=npz_path, randaugment="rand-m9-mstd0.5-inc1"),
               1)[0]
  for key in ("crop_box", "flip", "label"):
    np.testing.assert_array_equal(on[key], off[key])
  levels = lambda batch: batch["image"] * STD * 255 + MEAN * 255
  np.testing.assert_allclose(levels(on), np.round(levels(on)), atol=1e-3)
  assert np.abs(levels(off) - np.round(levels(off))).max() > 0.1  # off: not rounded
  assert (np.abs(on["image"] - off["image"]).max((1, 2, 3)) > 0).sum() >= 4


def test_erasing_in_the_pipeline_changes_one_rectangle_per_view(npz_path):
  config = data_config(source="npz", path=npz_path)
  off = batches(config, 1, num_views=2)[0]["image"].reshape(-1, 32, 32, 3)
  config.data.random_erasing_prob = 1.0
  on = batches(config, 1, num_views=2)[0]["image"].reshape(-1, 32, 32, 3)
  for got, want in zip(on, off):
    changed = (got != want).any(-1)
    rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
    box = np.zeros_like(changed)
    box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    np.testing.assert_array_equal(changed, box)
    assert 0.02 - 0.03 <= box.mean() <= 1 / 3 + 0.03  # rounding of h and w at 32 px
  assert not np.array_equal(on[0], on[1])  # the two views erase independently


def test_resume_with_augmentation_yields_exactly_the_remaining_batches(npz_path):
  config = data_config(source="npz", path=npz_path, **MAE_FINETUNE)
  fresh = batches(config, 5, num_views=2)
  resumed = batches(config, 2, num_views=2, start_step=3)  # mid-epoch: element 24 of 20
  for got, want in zip(resumed, fresh[3:]):
    for key in ("image", "crop_box", "flip", "label"):
      np.testing.assert_array_equal(got[key], want[key])
  plain = batches(data_config(source="npz", path=npz_path), 1, num_views=2)[0]
  assert not np.array_equal(fresh[0]["image"], plain["image"])
