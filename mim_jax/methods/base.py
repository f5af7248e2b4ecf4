"""The interface between the generic trainer (mim_jax/training/) and a method, and between
a method and everything that reads its trained encoder back.

A method says only what is specific to it: its model parts, how its masks are drawn,
its loss, whether it keeps target (EMA) parameters, and what its encoder is (`eval_encoder`).
The trainer owns everything else (mesh, optimizer, EMA update, accumulation, checkpoints,
logging).
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from mim_jax.methods import common
from mim_jax.models import vit

PyTree = Any
Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]

# A loss may return, under metrics[TARGET_UPDATES], new values for top-level entries of
# the target params that its own forward pass computes (BatchNorm running statistics of
# the streamed linear probe). The trainer averages them over micro-batches like every
# metric, stores them when the step's update is applied, and does not log them.
TARGET_UPDATES = "target_updates"


@dataclasses.dataclass(frozen=True)
class EvalEncoder:
  """A method's encoder as the evaluation protocols, the k-NN monitor, fine-tuning, export
  and inspection see it.

  module: a ViTEncoder built at the image size the encoder is evaluated at
    (`module.image_size`, grid `module.grid_hw`), that never hides patches.
  path: where its parameters sit in a TrainState: ('params', 'encoder') for the online
    encoder, or a path into 'target_params' for an EMA target.
  exclude: keys stored there that `module` has no use for (SimMIM's mask token).
  """
  module: vit.ViTEncoder
  path: Tuple[str, ...] = ("params", "encoder")
  exclude: Tuple[str, ...] = ()

  @property
  def image_size(self) -> int:
    return self.module.image_size

  @property
  def grid_hw(self) -> Tuple[int, int]:
    return self.module.grid_hw

  def params(self, state: Any) -> PyTree:
    """The encoder's parameters (or ShapeDtypeStructs) from a TrainState, or from a dict
    with the state's fields ({'params': ..., 'target_params': ...})."""
    tree = state
    for key in self.path:
      tree = tree[key] if isinstance(tree, Mapping) else getattr(tree, key)
    return {k: v for k, v in tree.items() if k not in self.exclude}

  def nest(self, params: PyTree) -> Dict[str, Any]:
    """`params` placed at `path` in a dict shaped like the state: the inverse of
    `params` (e.g. the sub-tree of a checkpoint to read)."""
    for key in reversed(self.path):
      params = {key: params}
    return params


@dataclasses.dataclass(frozen=True)
class EvalDefaults:
  """How a method's official code evaluates its encoder; the protocols use these unless
  the evaluation config sets `pool` / `block` (mim_jax/evaluation/run.py, downstream.py,
  monitor.py).

  knn_pool, linear_probe_pool, finetune_pool: the feature each protocol reads, 'cls' (the
    cls token) or 'mean' (the mean of the patch tokens; fine-tuning then applies a fresh
    LayerNorm, MAE's `global_pool`). The attentive probe reads every token.
  block_fraction: where the k-NN and linear probe read the encoder: None, the last block
    after the final norm; f, the output of block round(f·depth) before the final norm
    (SimMIM probes block 8 of ViT-B's 12: 2/3; Latent MIM the last block without the
    final norm: 1).
  reported: the protocols the method's paper reports for ViT-B/16 on ImageNet-1k.
  source: the official code (or paper section) these come from.
  """
  knn_pool: str = "cls"
  linear_probe_pool: str = "cls"
  finetune_pool: str = "mean"
  block_fraction: Optional[float] = None
  reported: Tuple[str, ...] = ()
  source: str = ""

  def pool(self, protocol: str) -> str:
    """The feature `protocol` reads: `knn`, `linear_probe`, `attentive_probe` or
    `finetune`."""
    if protocol == "attentive_probe":
      return "tokens"
    return {"knn": self.knn_pool, "linear_probe": self.linear_probe_pool,
            "finetune": self.finetune_pool}[protocol]

  def fill(self, protocol: str, pool: Optional[str], block: Optional[int],
           depth: int) -> Tuple[str, Optional[int]]:
    """(pool, block) of an evaluation config, each left None replaced by this default for
    `protocol` in a `depth`-block encoder; a value the config sets wins."""
    return (self.pool(protocol) if pool is None else pool,
            self.block(depth) if block is None else block)

  def block(self, depth: int) -> Optional[int]:
    """The block the k-NN and linear probe read in a `depth`-block encoder (1-based,
    before the final norm), None: the last after the final norm."""
    if self.block_fraction is None:
      return None
    return min(max(int(round(self.block_fraction * depth)), 1), depth)


@dataclasses.dataclass(frozen=True)
class Claim:
  """A direction the method's paper reports against method `over`, which the comparison
  checks on its own study (tools/compare.py `claims_table`).

  protocol: 'knn', 'linear_probe', 'attentive_probe' or 'finetune': this method's top-1
    above `over`'s at the last checkpoint (each at its best pool); with `cheaper`, fewer
    pretraining FLOPs per step than `over` at a top-1 not below `over`'s.
  paper: what the paper reports (figures, table or section).
  """
  over: str
  protocol: str
  paper: str
  cheaper: bool = False


class Method:
  """Base class of a pretraining method.

  `batch['image']` is [B, H, W, C], or [B, V, H, W, C] when `num_views` > 1.
  Masks are drawn by `make_masks` from explicit keys and passed into `loss`, so a loss
  can be evaluated for any given mask. `batch_keys` names the keys of the input
  pipeline's batches that the trainer sends to the devices (see
  data.create_train_iterator: 'image', 'crop_box', 'flip', 'label').
  A method is built from its config and the number of optimizer steps of the run
  (`total_steps`, for loss-side schedules; None where no loss is computed, e.g. when a
  finished run is read back), and raises ValueError on bad `config.method` fields.
  """

  num_views: int = 1
  batch_keys: Tuple[str, ...] = ("image",)
  eval_defaults: EvalDefaults = EvalDefaults()
  claims: Tuple[Claim, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict, total_steps: Optional[int] = None):
    self.config = config
    self.total_steps = total_steps

  @classmethod
  def shrink_config(cls, config: ml_collections.ConfigDict, old_patch_size: int,
                    old_depth: int, resize_data: bool) -> None:
    """Fit the method's own geometry fields of `config` to the test-size encoder that
    `config_files.shrink` made of a `old_patch_size`, `old_depth` one (`resize_data`: the
    images were resized to it too). Default: none to fit."""
    del config, old_patch_size, old_depth, resize_data

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    """Online parameters (the only ones the optimizer updates)."""
    raise NotImplementedError

  def make_masks(self, rng: jax.Array, batch: Batch) -> Dict[str, jax.Array]:
    raise NotImplementedError

  def init_targets(self, rng: jax.Array, batch: Batch, params: PyTree) -> PyTree:
    """The parameters the optimizer does not update, in a fresh state (the train state's
    `target_params`): by default a copy of `target_source(params)` (EMA targets), or {}
    for a method without. A method that keeps other such parameters (the streamed linear
    probe: its frozen encoder and BatchNorm statistics) overrides it."""
    del rng, batch
    source = self.target_source(params)
    return {} if source is None else jax.tree.map(jnp.copy, source)

  def warm_start(self, params: PyTree, target_params: PyTree) -> Tuple[PyTree, PyTree]:
    """(params, target_params) of a fresh run (no checkpoint restored) from the
    initialised ones, e.g. a pretrained encoder for fine-tuning; the same structure and
    shapes. Default: as they are."""
    return params, target_params

  def loss(self, params: PyTree, target_params: Optional[PyTree], batch: Batch,
           masks: Dict[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> Tuple[jax.Array, Metrics]:
    """Scalar loss and float metrics for one (micro-)batch. `target_params` arrive under
    stop-gradient; `rng` is for dropout/drop-path; `step` drives loss-side schedules."""
    raise NotImplementedError

  # Target (EMA) parameters. A method with targets overrides both.
  def target_source(self, params: PyTree) -> Optional[PyTree]:
    """The part of the online params that the target params track (None: no targets)."""
    return None

  def target_momentum(self, step: jax.Array) -> jax.Array:
    """EMA momentum m for `target = m·target + (1 − m)·source`, evaluated every step (of
    the run's `total_steps`)."""
    return jnp.zeros((), jnp.float32)

  # What the encoder is, for everything that reads it back.
  def eval_encoder(self, use_target: bool = False, image_size: Optional[int] = None,
                   **module_fields) -> EvalEncoder:
    """The encoder to evaluate, export or fine-tune: by default the ViT of `config.model`
    at `config.data.image_size` (or `image_size`; sin-cos embeddings are recomputed for
    it) with the online `params['encoder']`. `use_target` asks for the EMA target encoder
    of a method that keeps one; `module_fields` replace ViTEncoder fields (e.g.
    drop_path_rate for fine-tuning, scan_layers=False for inspection)."""
    if use_target:
      raise ValueError(f"config.method.name={self.config.method.name!r} keeps no target "
                       "(EMA) encoder: set use_target=False.")
    module = common.build_encoder(self.config, image_size, use_mask_token=False,
                                  **module_fields)
    return EvalEncoder(module)

  def encoder_inputs(self, batch: Batch,
                     masks: Dict[str, jax.Array]) -> Tuple[jax.Array, jax.Array]:
    """(images [B', S, S, C], mask [B', N]) as the encoder sees them in training, 1 =
    hidden; each view of a multi-view batch is a row of its own (B' = B·V)."""
    images, mask = batch["image"], masks["mask"]
    if images.ndim == 5:  # [B, V, S, S, C] with mask [B, V, N]
      images = images.reshape((-1,) + images.shape[2:])
      mask = mask.reshape(-1, mask.shape[-1])
    return images, mask

  def summaries(self, params: PyTree, batch: Batch,
                masks: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """Images to log, each [B, h, w, C] in [0, 1]. Optional."""
    return {}
