"""What notebooks/inspect_checkpoint.ipynb shows of a pretraining run: its masks, the
encoder's cls attention and cls-feature nearest neighbours, and the plots of them. The
run is read with `mim_jax.evaluation.pretrained.load_params`; the encoder is the method's
`eval_encoder`.

Computation is plain JAX/NumPy; the `plot_*` functions import matplotlib (the
`notebook` extra) when called.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax import data
from mim_jax.methods import common
from mim_jax.methods.base import Method
from mim_jax.models import vit

MASK_GREY = 0.5


# --- images of the run ---------------------------------------------------------------

def training_batch(config: ml_collections.ConfigDict, method: Method,
                   num_images: int) -> Dict[str, jax.Array]:
  """The first `num_images` examples of the run's train pipeline (augmented as in
  training, all views), with the keys the method reads (`method.batch_keys`)."""
  batch = next(data.create_train_iterator(config, global_batch_size=num_images,
                                          num_views=method.num_views, process_index=0,
                                          process_count=1))
  return {k: jnp.asarray(batch[k]) for k in method.batch_keys}


def eval_images(config: ml_collections.ConfigDict, num_images: int,
                image_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """The first `num_images` images [M, S, S, 3] (normalised) and labels [M] of the run's
  eval split, centre-cropped as for evaluation to `image_size` (default
  config.data.image_size; the encoder's: `eval_encoder().image_size`), fewer if the split
  is smaller."""
  if image_size is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.image_size = image_size
  batch = next(data.create_eval_iterator(config, config.data.eval_split,
                                         global_batch_size=num_images, process_index=0,
                                         process_count=1))
  valid = batch["valid"]
  return batch["image"][valid], batch["label"][valid]


def method_batch(config: ml_collections.ConfigDict, method: Method,
                 num_images: int) -> Dict[str, jax.Array]:
  """A batch to draw masks on: the first `num_images` eval images, whole and centre
  cropped; for a multi-view method, which needs views and their crop geometry, the first
  train batch instead."""
  if method.num_views > 1:
    return training_batch(config, method, num_images)
  return {"image": jnp.asarray(eval_images(config, num_images)[0])}


def to_pixels(config: ml_collections.ConfigDict, images) -> np.ndarray:
  """Normalised images -> [0, 1] pixels as a NumPy array (`common.to_pixels`)."""
  return np.asarray(common.to_pixels(config, images))


# --- masks (the images and mask the encoder sees: `Method.encoder_inputs`) ---------------

def hide_patches(pixels: np.ndarray, mask: np.ndarray, patch_size: int,
                 fill: float = MASK_GREY) -> np.ndarray:
  """[B, H, W, C] pixels with the patches where `mask` [B, N] is 1 set to `fill`."""
  b, h, w, _ = pixels.shape
  hidden = np.asarray(mask, bool).reshape(b, h // patch_size, w // patch_size)
  hidden = hidden.repeat(patch_size, axis=1).repeat(patch_size, axis=2)  # [B, H, W]
  return np.where(hidden[..., None], fill, pixels)


# --- encoder: cls attention and features ---------------------------------------------

def encoder_of(method: Method, params, use_target: bool = False
               ) -> Tuple[vit.ViTEncoder, dict]:
  """The run's encoder as evaluation builds it (`method.eval_encoder`) and its params from
  `params` ({'params', 'target_params'}, or a TrainState), unrolled with XLA attention and
  no remat (`vit.unrolled`), so that it runs anywhere and each block sows its weights."""
  encoder = method.eval_encoder(use_target)
  return vit.unrolled(encoder.module, encoder.params(params))


def cls_attention(encoder: vit.ViTEncoder, params, images) -> np.ndarray:
  """Attention of the cls query to the patch keys in the last block, per head:
  [B, H, gh, gw] (each head's row over cls + patches sums to 1; the cls→cls weight is
  left out). Runs the encoder with the 'intermediates' collection mutable, which makes
  every `vit.Attention` compute its weights explicitly and sow them."""
  _, variables = jax.jit(
      lambda p, x: encoder.apply({"params": p}, x, mutable=["intermediates"]))(params, images)
  blocks = variables["intermediates"]
  last = max((name for name in blocks if name.startswith("blocks_")),
             key=lambda name: int(name.split("_")[-1]))
  weights = blocks[last]["attn"]["attention_weights"][0]  # [B, H, 1 + N, 1 + N]
  cls_row = weights[:, :, 0, 1:]  # [B, H, N]
  return np.asarray(cls_row.reshape(cls_row.shape[:2] + tuple(encoder.grid_hw)))


def cls_features(encoder: vit.ViTEncoder, params, images, batch_size: int = 64) -> np.ndarray:
  """cls token after the final LayerNorm, [M, D], in batches of `batch_size`."""
  forward = jax.jit(lambda p, x: encoder.apply({"params": p}, x)[:, 0])
  return np.concatenate([np.asarray(forward(params, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def nearest_neighbours(features: np.ndarray, k: int) -> np.ndarray:
  """Indices [M, k] of each row's k most cosine-similar other rows, most similar first."""
  if not 0 < k < len(features):
    raise ValueError(f"k={k} neighbours need at least k + 1 = {k + 1} images; got "
                     f"{len(features)}.")
  x = features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
  similarity = x @ x.T  # [M, M]
  np.fill_diagonal(similarity, -np.inf)
  return np.argsort(-similarity, axis=-1, kind="stable")[:, :k]


def neighbour_label_agreement(labels: np.ndarray, neighbours: np.ndarray) -> float:
  """Fraction of (query, neighbour) pairs with the same label."""
  return float(np.mean(labels[neighbours] == labels[:, None]))


# --- plots -----------------------------------------------------------------------------

def _grid(num_rows: int, num_cols: int, cell: float = 1.6):
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(num_rows, num_cols, squeeze=False,
                           figsize=(cell * num_cols, cell * num_rows))
  for ax in axes.flat:
    ax.axis("off")
  return fig, axes


def plot_image_rows(rows: Dict[str, np.ndarray], max_images: int = 8):
  """One row per entry of `rows` (title -> [B, H, W, 3] pixels in [0, 1])."""
  num_cols = min(max_images, max(len(v) for v in rows.values()))
  fig, axes = _grid(len(rows), num_cols, cell=1.6)
  for r, (title, images) in enumerate(rows.items()):
    axes[r, 0].set_title(title, loc="left", fontsize=9)
    for c, image in enumerate(images[:num_cols]):
      axes[r, c].imshow(image)
  fig.tight_layout()
  return fig


def plot_attention(pixels: np.ndarray, attention: np.ndarray, max_heads: int = 4):
  """Per image (row): the image, the head-mean cls attention over it, then up to
  `max_heads` single heads. pixels [B, H, W, 3]; attention [B, heads, gh, gw]."""
  heads = min(max_heads, attention.shape[1])
  fig, axes = _grid(len(pixels), 2 + heads)
  h, w = pixels.shape[1:3]
  for r, (image, maps) in enumerate(zip(pixels, attention)):
    panels = [("mean", maps.mean(axis=0))] + [(f"head {i}", maps[i]) for i in range(heads)]
    axes[r, 0].imshow(image)
    for c, (title, attn) in enumerate(panels, start=1):
      axes[r, c].imshow(image)
      axes[r, c].imshow(attn, cmap="inferno", alpha=0.6, interpolation="nearest",
                        extent=(-0.5, w - 0.5, h - 0.5, -0.5))  # the image's pixel extent
      if r == 0:
        axes[r, c].set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def plot_neighbours(pixels: np.ndarray, labels: np.ndarray, neighbours: np.ndarray,
                    queries: Sequence[int]):
  """Per query (row): the query image, then its neighbours; titles are labels."""
  fig, axes = _grid(len(queries), 1 + neighbours.shape[1])
  for r, q in enumerate(queries):
    for c, index in enumerate([q] + list(neighbours[q])):
      axes[r, c].imshow(pixels[index])
      axes[r, c].set_title(("query " if c == 0 else "") + f"label {labels[index]}",
                           fontsize=8)
  fig.tight_layout()
  return fig


def plot_curves(scalars: Dict[str, List[Tuple[int, float]]], tags: Sequence[str],
                num_cols: int = 3):
  """One panel per tag present in `scalars` (tag -> (step, value) pairs), against step,
  `num_cols` panels a row."""
  present = [t for t in tags if t in scalars]
  if not present:
    raise ValueError(f"None of {list(tags)} was logged; logged scalars: {sorted(scalars)}.")
  num_cols = min(num_cols, len(present))
  fig, axes = _grid(-(-len(present) // num_cols), num_cols, cell=3.0)
  for ax, tag in zip(axes.flat, present):
    ax.axis("on")
    ax.plot(*zip(*scalars[tag]))
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
  fig.tight_layout()
  return fig
