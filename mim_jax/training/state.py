"""The train state: one pytree holding everything a step reads and writes, initialised
from a method and an optimizer, directly into its shardings."""
import functools
from typing import Any, Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax import checkpoint, sharding
from mim_jax.methods.base import Method

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """step: train steps taken (skipped ones included); params: online parameters (the
  only ones with gradients); target_params: the parameters the optimizer does not update
  (`Method.init_targets`): EMA targets, or the streamed linear probe's frozen encoder and
  BatchNorm statistics (empty dict when the method has none); opt_state: optax state of
  `params`; rng: base key, folded with `step` each step; skipped_steps: steps whose
  update was skipped for a non-finite loss or gradient; nonfinite_streak: how many of the
  latest steps in a row were skipped."""
  step: jax.Array
  params: PyTree
  target_params: PyTree
  opt_state: PyTree
  rng: jax.Array
  skipped_steps: jax.Array
  nonfinite_streak: jax.Array


def sample_batch(config, method: Method) -> Dict[str, jax.Array]:
  """A one-image batch of the shape the method trains on (for initialisation)."""
  image_shape = (config.data.image_size, config.data.image_size, 3)
  if method.num_views > 1:
    image_shape = (method.num_views,) + image_shape
  return {"image": jnp.zeros((1,) + image_shape, jnp.float32)}


def init_state(method: Method, tx: optax.GradientTransformation, rng: jax.Array,
               batch: PyTree) -> TrainState:
  """A fresh state: `method`'s params and targets for `batch`'s shapes, `tx`'s state."""
  param_rng, state_rng = jax.random.split(rng)
  params = method.init(param_rng, batch)
  target_params = method.init_targets(jax.random.fold_in(param_rng, 1), batch, params)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, target_params=target_params,
                    opt_state=tx.init(params), rng=state_rng, skipped_steps=zero,
                    nonfinite_streak=zero)


def initializer(method: Method, tx: optax.GradientTransformation, config):
  """(init_fn, rng, batch): `init_fn(rng, batch)` builds the run's fresh state from the
  config's seed and a one-image batch; jit it, or `jax.eval_shape` it for the shapes."""
  return (functools.partial(init_state, method, tx), jax.random.PRNGKey(config.seed),
          sample_batch(config, method))


def abstract_state(method: Method, tx: optax.GradientTransformation, config,
                   shardings: Optional[Any] = None, mesh=None) -> TrainState:
  """The state's shapes and dtypes (`jax.ShapeDtypeStruct`), nothing allocated: with
  `shardings` (a pytree or one sharding for every leaf) or the config's shardings on
  `mesh`, each leaf carries its sharding (for restoring a checkpoint or compiling ahead
  of time)."""
  abstract = jax.eval_shape(*initializer(method, tx, config))
  if mesh is not None:
    shardings = sharding.state_shardings(mesh, abstract, config)
  if shardings is None:
    return abstract
  if not isinstance(shardings, TrainState):
    shardings = jax.tree.map(lambda _: shardings, abstract)
  return checkpoint.abstract_with_shardings(abstract, shardings)


def create_train_state(method: Method, tx: optax.GradientTransformation, config,
                       mesh) -> Tuple[TrainState, TrainState]:
  """Initialise the state directly into its shardings. Returns (state, shardings)."""
  init_fn, rng, batch = initializer(method, tx, config)  # traced once for both below
  shardings = sharding.state_shardings(mesh, jax.eval_shape(init_fn, rng, batch), config)
  return jax.jit(init_fn, out_shardings=shardings)(rng, batch), shardings


def place_like(tree: PyTree, placed: PyTree) -> PyTree:
  """`tree`'s values in `placed`'s shardings (every process holds the full values)."""
  return jax.tree.map(
      lambda value, like: value if value is like else jax.make_array_from_callback(
          like.shape, like.sharding, lambda index, v=np.asarray(value, like.dtype): v[index]),
      tree, placed)
