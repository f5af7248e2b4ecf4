"""Procedural labelled images, generated deterministically in NumPy.

Each class is a fixed combination of four attributes: shape (disk, square, ring,
diamond), stripe orientation (0, 45, 90, 135 degrees), colour palette (4) and stripe
frequency (2), so 128 classes at most. Classes share attributes, so most of them are told
apart only by combining shape, texture and colour. Every image also draws a random
position, size, stripe phase, orientation jitter, colour jitter, background gradient and
pixel noise.
"""
import numpy as np

SHAPES = ("disk", "square", "ring", "diamond")
ORIENTATIONS_DEG = (0.0, 45.0, 90.0, 135.0)
STRIPE_CYCLES = (1.5, 3.0)  # stripe periods across the shape's diameter
# Per palette: two stripe colours and the background colour, RGB in [0, 1].
PALETTES = np.array([
    [[0.90, 0.20, 0.15], [0.95, 0.85, 0.30], [0.15, 0.25, 0.45]],
    [[0.20, 0.60, 0.90], [0.95, 0.95, 0.95], [0.35, 0.20, 0.15]],
    [[0.25, 0.75, 0.30], [0.45, 0.15, 0.55], [0.80, 0.75, 0.60]],
    [[0.95, 0.55, 0.10], [0.10, 0.10, 0.10], [0.40, 0.60, 0.55]],
], dtype=np.float32)
MAX_CLASSES = len(SHAPES) * len(ORIENTATIONS_DEG) * len(PALETTES) * len(STRIPE_CYCLES)
_CHUNK_PIXELS = 2**20  # pixels drawn per chunk: bounds float32 scratch memory


def class_attributes(num_classes: int) -> np.ndarray:
  """[num_classes, 4] (shape, orientation, palette, cycles) indices, fixed for all seeds."""
  if not 1 <= num_classes <= MAX_CLASSES:
    raise ValueError(f"config.data.num_classes must be in [1, {MAX_CLASSES}] for the "
                     f"synthetic source, got {num_classes}.")
  combos = np.stack(np.meshgrid(np.arange(len(SHAPES)), np.arange(len(ORIENTATIONS_DEG)),
                                np.arange(len(PALETTES)), np.arange(len(STRIPE_CYCLES)),
                                indexing="ij"), axis=-1).reshape(-1, 4)
  return combos[np.random.default_rng(0).permutation(MAX_CLASSES)[:num_classes]]


def _sample_params(num_examples: int, num_classes: int, seed: int, split_id: int) -> dict:
  """Per-image labels and nuisance parameters for a whole split."""
  rng = np.random.default_rng([seed, split_id])
  n = num_examples
  labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
  return {
      "label": labels,
      "center": rng.uniform(-0.35, 0.35, (n, 2)).astype(np.float32),
      "radius": rng.uniform(0.35, 0.65, n).astype(np.float32),
      "angle_jitter": rng.uniform(-12.0, 12.0, n).astype(np.float32),
      "phase": rng.uniform(0.0, 2 * np.pi, n).astype(np.float32),
      "colour_jitter": rng.normal(0.0, 0.07, (n, 3, 3)).astype(np.float32),
      "gradient_angle": rng.uniform(0.0, 2 * np.pi, n).astype(np.float32),
      "gradient_strength": rng.uniform(0.0, 0.35, n).astype(np.float32),
      "noise_seed": rng.integers(0, 2**31, n),
  }


def _signed_distance(shape_ids, dx, dy, radius):
  """Distance to each image's shape outline, negative inside. dx, dy: [n, S, S]."""
  out = np.empty_like(dx)
  for shape_id in range(len(SHAPES)):
    sel = shape_ids == shape_id
    x, y, r = dx[sel], dy[sel], radius[sel, None, None]
    if SHAPES[shape_id] == "disk":
      out[sel] = np.sqrt(x * x + y * y) - r
    elif SHAPES[shape_id] == "square":
      out[sel] = np.maximum(np.abs(x), np.abs(y)) - 0.85 * r
    elif SHAPES[shape_id] == "ring":
      out[sel] = np.abs(np.sqrt(x * x + y * y) - 0.7 * r) - 0.3 * r
    else:
      out[sel] = (np.abs(x) + np.abs(y) - 1.2 * r) * np.float32(1 / np.sqrt(2))
  return out


def _unit_clip(x: np.ndarray) -> np.ndarray:
  """Clips to [0, 1] in place (faster than np.clip)."""
  np.maximum(x, 0.0, out=x)
  return np.minimum(x, 1.0, out=x)


def _render(params: dict, attributes: np.ndarray, image_size: int) -> np.ndarray:
  """Draws the images described by `params` as uint8 [n, S, S, 3]."""
  attrs = attributes[params["label"]]  # [n, 4]
  shape_ids, orient_ids, palette_ids, cycle_ids = attrs.T
  coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size * 2.0 - 1.0
  y, x = coords[None, :, None], coords[None, None, :]  # [1, S, 1], [1, 1, S]
  full = (len(attrs), image_size, image_size)
  dx = np.broadcast_to(x - params["center"][:, 0, None, None], full)  # [n, S, S]
  dy = np.broadcast_to(y - params["center"][:, 1, None, None], full)
  radius = params["radius"]

  inside = _unit_clip(0.5 - _signed_distance(shape_ids, dx, dy, radius) * (image_size / 2))
  theta = np.deg2rad(np.asarray(ORIENTATIONS_DEG, np.float32)[orient_ids]
                     + params["angle_jitter"])[:, None, None]
  cycles = np.asarray(STRIPE_CYCLES, np.float32)[cycle_ids]
  freq = (np.pi * cycles / radius)[:, None, None]
  wave = np.sin(freq * (dx * np.cos(theta) + dy * np.sin(theta)) + params["phase"][:, None, None])
  stripe = _unit_clip(wave + 0.5)[:, None]  # [n, 1, S, S], sharpened stripes

  # Channels-first while drawing (fast NumPy broadcasting), NHWC at the end.
  colours = _unit_clip(PALETTES[palette_ids] + params["colour_jitter"])[..., None, None]
  fg = colours[:, 1] + stripe * (colours[:, 0] - colours[:, 1])  # [n, 3, S, S]
  g = params["gradient_angle"][:, None, None]
  shade = 1.0 + params["gradient_strength"][:, None, None] * (x * np.cos(g) + y * np.sin(g))
  bg = shade[:, None] * colours[:, 2]
  images = bg + inside[:, None] * (fg - bg)

  for image, noise_seed in zip(images, params["noise_seed"]):
    image += np.random.default_rng(noise_seed).standard_normal(image.shape, np.float32) * 0.06
  images = (_unit_clip(images) * 255.0 + 0.5).astype(np.uint8)
  return images.transpose(0, 2, 3, 1)


def make_images(num_examples: int, image_size: int, num_classes: int, seed: int,
                split_id: int, indices: np.ndarray | None = None):
  """Images uint8 [n, S, S, 3] and labels int32 [n] of one synthetic split.

  The split is a pure function of (num_examples, num_classes, seed, split_id);
  `indices` selects which of its examples to render (default: all), so a process can
  render only its own shard and still agree with every other process.
  """
  params = _sample_params(num_examples, num_classes, seed, split_id)
  if indices is not None:
    params = {k: v[indices] for k, v in params.items()}
  attributes = class_attributes(num_classes)
  n = len(params["label"])
  images = np.empty((n, image_size, image_size, 3), np.uint8)
  chunk = max(1, _CHUNK_PIXELS // image_size**2)
  for start in range(0, n, chunk):
    part = {k: v[start:start + chunk] for k, v in params.items()}
    images[start:start + chunk] = _render(part, attributes, image_size)
  return images, params["label"]
