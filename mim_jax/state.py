"""The train state: one pytree holding everything a step reads and writes."""
from typing import Any

import flax.struct
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """step: optimizer steps taken; params: online parameters (the only ones with
  gradients); target_params: EMA targets (empty dict when the method has none);
  opt_state: optax state of `params`; rng: base key, folded with `step` each step."""
  step: jax.Array
  params: PyTree
  target_params: PyTree
  opt_state: PyTree
  rng: jax.Array
