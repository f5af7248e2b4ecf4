"""The interface between the generic trainer (mim_jax/train.py) and a method.

A method says only what is specific to it: its model parts, how its masks are drawn,
its loss, and whether it keeps target (EMA) parameters. The trainer owns everything
else (mesh, optimizer, EMA update, accumulation, checkpoints, logging).
"""
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

PyTree = Any
Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]


class Method:
  """Base class of a pretraining method.

  `batch['image']` is [B, H, W, C], or [B, V, H, W, C] when `num_views` > 1.
  Masks are drawn by `make_masks` from explicit keys and passed into `loss`, so a loss
  can be evaluated for any given mask. `batch_keys` names the keys of the input
  pipeline's batches that the trainer sends to the devices (see
  data.create_train_iterator: 'image', 'crop_box', 'flip', 'label').
  """

  num_views: int = 1
  batch_keys: Tuple[str, ...] = ("image",)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    """Online parameters (the only ones the optimizer updates)."""
    raise NotImplementedError

  def make_masks(self, rng: jax.Array, batch: Batch) -> Dict[str, jax.Array]:
    raise NotImplementedError

  def warm_start(self, params: PyTree) -> PyTree:
    """Params of a fresh run (no checkpoint restored) from the initialised `params`, e.g.
    a pretrained encoder for fine-tuning; the same structure and shapes. Default: as is."""
    return params

  def loss(self, params: PyTree, target_params: Optional[PyTree], batch: Batch,
           masks: Dict[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> Tuple[jax.Array, Metrics]:
    """Scalar loss and float metrics for one (micro-)batch. `target_params` arrive under
    stop-gradient; `rng` is for dropout/drop-path; `step` drives loss-side schedules."""
    raise NotImplementedError

  # Target (EMA) parameters. A method with targets overrides all three.
  def target_source(self, params: PyTree) -> Optional[PyTree]:
    """The part of the online params that the target params track (None: no targets)."""
    return None

  def target_momentum(self, step: jax.Array, total_steps: int) -> jax.Array:
    """EMA momentum m for `target = m·target + (1 − m)·source`, evaluated every step."""
    return jnp.zeros((), jnp.float32)

  def summaries(self, params: PyTree, batch: Batch,
                masks: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """Images to log, each [B, h, w, C] in [0, 1]. Optional."""
    return {}
