"""Frozen-encoder features of a whole split, computed on the mesh like a training step,
and the raw-pixel features the same protocols take as a baseline.

The probes and k-NN here work on features computed once from the un-augmented
(eval-preprocessed) images of each split: cheap enough for a CPU, at the cost of the
random-crop augmentation the official MAE linear probe (main_linprobe.py) applies.
"""
import functools
import time
from typing import Any, Dict, Iterable, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mim_jax import sharding
from mim_jax.models import vit
from mim_jax.training.progress import format_duration

POOLS = ("cls", "mean", "tokens")


def check_pool(pool: str, allowed: Tuple[str, ...] = POOLS, field: str = "pool") -> None:
  if pool not in allowed:
    raise ValueError(f"Unknown {field}={pool!r}; choose one of {allowed}.")


def pool_tokens(tokens: jax.Array, pool: str) -> jax.Array:
  """[B, 1 + L, D] encoder tokens (cls first) -> [B, D] cls token ('cls'), mean of the
  patch tokens without cls ('mean', MAE's global_pool), or the tokens themselves."""
  if pool == "cls":
    return tokens[:, 0]
  if pool == "mean":
    return tokens[:, 1:].mean(axis=1)
  return tokens


def representation_stats(features: np.ndarray) -> Dict[str, float]:
  """Collapse diagnostics of [N, D] features. 'effective_rank': RankMe (Garrido et al.
  2023, eq. 1), exp of the entropy of the singular values normalised to sum to 1, from 1
  (one direction) to min(N, D) (all equal); 'mean_cosine': the mean cosine similarity of
  distinct rows (1: every feature points the same way)."""
  x = np.asarray(features, np.float64)
  singular = np.linalg.svd(x, compute_uv=False)
  p = singular / singular.sum() + 1e-12
  unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  n = len(unit)
  pairs = (np.square(unit.sum(axis=0)).sum() - np.square(unit).sum()) / (n * (n - 1))
  return {"effective_rank": float(np.exp(-(p * np.log(p)).sum())),
          "mean_cosine": float(pairs)}


def data_parallel_mesh() -> Mesh:
  """All devices on the batch axes, parameters replicated."""
  return sharding.create_mesh(ml_collections.ConfigDict(
      {"sharding": {"mode": "data_parallel", "fsdp_size": 1}}))


@functools.lru_cache(maxsize=32)
def _compiled_forward(encoder: vit.ViTEncoder, pool: str, block: Optional[int], mesh: Mesh):
  """Jitted (params, images, labels, valid) -> the same three with images replaced by
  float32 features, every output replicated so each process can read all of them."""

  def forward(params, images, labels, valid):
    tokens = encoder.apply({"params": params}, images, block=block)
    return pool_tokens(tokens, pool).astype(jnp.float32), labels, valid

  return jax.jit(forward, out_shardings=sharding.replicated(mesh))


# Seconds between two progress lines of a feature pass (the first batch and the end are
# always logged).
PROGRESS_SECONDS = 30.0


class _Progress:
  """Logs 'Encoded n of total <what> (rate/s, ETA h:mm:ss)' after the first batch, at most
  every PROGRESS_SECONDS seconds after that, and at the end; nothing without a total."""

  def __init__(self, what: str, total: Optional[int]):
    self.what, self.total = what, total
    self.start = self.last = time.perf_counter()
    self.done = 0

  def update(self, count: int, final: bool = False) -> None:
    first = self.done == 0
    self.done += count
    now = time.perf_counter()
    if self.total is None or not (first or final or now - self.last >= PROGRESS_SECONDS):
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    eta = "" if final else f", ETA {format_duration((self.total - self.done) / rate)}"
    logging.info("Encoded %d of %d %s (%.1f/s%s)", self.done, self.total, self.what, rate, eta)


def extract_features(encoder: vit.ViTEncoder, params: Any, batches: Iterable[dict], *,
                     pool: str = "cls", block: Optional[int] = None,
                     mesh: Optional[Mesh] = None, what: str = "examples",
                     total: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(features, labels) of every valid example in `batches`.

  `batches` yields this process's dicts {'image' [b, H, W, C] normalised float32,
  'label' [b], optional 'valid' [b] bool} (`mim_jax.data.create_eval_iterator`); rows
  with valid=False (padding) are dropped. Each batch is assembled into one global array
  sharded over `mesh`'s batch axes (default: all devices, data parallel) and encoded by
  a jitted forward with replicated params; the outputs come back to every process, so
  with several processes each returns the features of all of them (in global batch
  order). `block` k takes the k-th block's output (1-based, no final norm) instead of
  the final normed tokens. Returns features float32 [N, D] ('cls', 'mean') or
  [N, 1 + L, D] ('tokens') and labels int32 [N]. With `total` (the examples to expect),
  progress is logged as `what` (`_Progress`).
  """
  check_pool(pool)
  encoder.check_block(block)
  mesh = data_parallel_mesh() if mesh is None else mesh
  local_devices = mesh.devices.size // jax.process_count()
  params = jax.device_put(params, sharding.replicated(mesh))
  forward = _compiled_forward(encoder, pool, block, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  features, labels = [], []
  progress = _Progress(what, total)
  for batch in batches:
    size = len(batch["label"])
    if size % local_devices:
      raise ValueError(f"The evaluation batch has {size} examples per process, not divisible "
                       f"by this process's {local_devices} devices: set the eval batch size "
                       f"(config.eval_batch_size) to a multiple of {mesh.devices.size}.")
    valid = batch.get("valid", np.ones(size, bool))
    local = {"image": np.asarray(batch["image"], np.float32),
             "label": np.asarray(batch["label"], np.int32), "valid": np.asarray(valid, bool)}
    inputs = sharding.global_batch(local, batch_sharding)
    out_features, out_labels, out_valid = forward(params, inputs["image"], inputs["label"],
                                                  inputs["valid"])
    keep = np.asarray(out_valid)
    features.append(np.asarray(out_features)[keep])
    labels.append(np.asarray(out_labels)[keep])
    progress.update(int(keep.sum()))
  if not features:
    raise ValueError("extract_features got no batches: is the split empty?")
  progress.update(0, final=True)
  return np.concatenate(features), np.concatenate(labels)


def pixel_features(batches: Iterable[dict], patch_size: Optional[int] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """(features, labels) of every valid example in `batches` (read as `extract_features`
  reads them) from the normalised pixels themselves, the raw-pixel baseline: float32
  [N, H·W·C] flattened images, or with `patch_size` p the patch grid as tokens
  [N, (H/p)·(W/p), p·p·C] (`vit.patchify`: row-major, each patch (p, p, C)) for the
  attentive probe. With several processes, every process gets all of them."""
  images, labels, valid = [], [], []
  for batch in batches:
    images.append(np.asarray(batch["image"], np.float32))
    labels.append(np.asarray(batch["label"], np.int32))
    valid.append(np.asarray(batch.get("valid", np.ones(len(batch["label"]), bool)), bool))
  if not images:
    raise ValueError("pixel_features got no batches: is the split empty?")
  images, labels, valid = (np.concatenate(x) for x in (images, labels, valid))
  if jax.process_count() > 1:  # every process yields the same number of (padded) batches
    images, labels, valid = (np.asarray(x) for x in multihost_utils.process_allgather(
        (images, labels, valid), tiled=True))
  images, labels = images[valid], labels[valid]
  if patch_size is None:
    return images.reshape(len(images), -1), labels
  if images.shape[1] % patch_size or images.shape[2] % patch_size:
    raise ValueError(f"Images of {images.shape[1]}x{images.shape[2]} px do not split into "
                     f"{patch_size} px patches.")
  return np.asarray(vit.patchify(images, patch_size)), labels
