"""The train state: one pytree holding everything a step reads and writes."""
from typing import Any

import flax.struct
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """step: train steps taken (skipped ones included); params: online parameters (the
  only ones with gradients); target_params: the parameters the optimizer does not update
  (`Method.init_targets`): EMA targets, or the streamed linear probe's frozen encoder and
  BatchNorm statistics (empty dict when the method has none); opt_state: optax state of
  `params`; rng: base key, folded with `step` each
  step; skipped_steps: steps whose update was skipped for a non-finite loss or gradient;
  nonfinite_streak: how many of the latest steps in a row were skipped."""
  step: jax.Array
  params: PyTree
  target_params: PyTree
  opt_state: PyTree
  rng: jax.Array
  skipped_steps: jax.Array
  nonfinite_streak: jax.Array
