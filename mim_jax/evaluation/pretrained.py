"""A pretraining run read back from its workdir: its config, its method, and only the
parameters a reader needs (the method's `eval_encoder` for evaluation, fine-tuning and
export; the method's parameters for inspection), never the optimizer state."""
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import optax
from absl import logging

from mim_jax import checkpoint, methods, optim
from mim_jax.methods.base import EvalEncoder, Method
from mim_jax.training.state import TrainState, abstract_state

PyTree = Any


def read_pretrain_config(workdir) -> ml_collections.ConfigDict:
  """The pretraining config of `workdir`, or an error naming config.pretrained."""
  if not workdir:
    raise ValueError("Set config.pretrained to the workdir of a pretraining run "
                     "(--config.pretrained=DIR).")
  try:
    return checkpoint.read_config(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.pretrained={workdir!r} is not a pretraining workdir: "
                            f"{e}") from None


def checkpoint_steps(workdir: str) -> List[int]:
  """Steps of the finished checkpoints in `workdir` (none: [])."""
  root = checkpoint.workdir_path(workdir) / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit())


def pretrained_step(workdir: str, step: Optional[int],
                    fields: Tuple[str, str] = ("config.pretrained",
                                               "config.pretrained_step")) -> int:
  """`step`, or the newest checkpoint step of `workdir`; an error naming the `fields`
  that hold them when the workdir has no such checkpoint."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{fields[0]}={workdir!r} has no checkpoints under "
                            "checkpoints/: point it at a pretraining run that has saved one.")
  if step is not None and step not in steps:
    raise ValueError(f"{fields[1]}={step} is not among the checkpoint steps {steps} of "
                     f"{workdir}.")
  return steps[-1] if step is None else step


def abstract_params(config: ml_collections.ConfigDict, method: Method) -> Dict[str, PyTree]:
  """{'params', 'target_params'} of `method` as ShapeDtypeStructs on the default device:
  the parameter fields of the TrainState its run saves."""
  state = abstract_state(method, optax.identity(), config,
                         jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  return {"params": state.params, "target_params": state.target_params}


def _read(workdir: str, step: Optional[int], wanted: PyTree) -> Tuple[PyTree, int]:
  """(checkpoint.restore_subtree of checkpoint `step`, step); with step None, of the newest
  checkpoint that reads (a damaged newer one is skipped with a warning, as the trainer's
  restore does). Logged with what was read."""
  steps = ([pretrained_step(workdir, step, ("workdir", "step"))] if step is not None else
           checkpoint_steps(workdir)[::-1])
  if not steps:
    pretrained_step(workdir, None, ("workdir", "step"))  # raises: no checkpoints
  for candidate in steps:
    try:
      restored = checkpoint.restore_subtree(workdir, candidate, wanted)
    except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint)
      if step is not None or candidate == steps[-1]:
        raise
      logging.warning("Checkpoint %d in %s cannot be read (%s); trying an older one.",
                      candidate, workdir, checkpoint.one_line(e))
      continue
    leaves = jax.tree.leaves(restored)
    logging.info("Read %d arrays (%.1f MB) under %s of checkpoint %d in %s", len(leaves),
                 sum(x.nbytes for x in leaves) / 1e6, sorted(wanted), candidate, workdir)
    return restored, candidate


def load_encoder(workdir: str, *, image_size: Optional[int] = None,
                 step: Optional[int] = None, use_target: bool = False,
                 **module_fields) -> Tuple[EvalEncoder, PyTree, ml_collections.ConfigDict]:
  """(encoder, its params, pretraining config) of `workdir`'s latest readable (or `step`)
  checkpoint, on the default device: the pretraining method's `eval_encoder(use_target,
  image_size, **module_fields)` (default image size: the one the method evaluates at),
  with only its parameters read from the checkpoint."""
  config = checkpoint.read_config(workdir)
  method = methods.create(config)
  encoder = method.eval_encoder(use_target, image_size, **module_fields)
  params, _ = read_encoder_params(workdir, step, config, method, encoder)
  return encoder, params, config


def read_encoder_params(workdir: str, step: Optional[int], config: ml_collections.ConfigDict,
                        method: Method, encoder: EvalEncoder) -> Tuple[PyTree, int]:
  """(`encoder`'s params, the step read): `encoder` is an `eval_encoder` of `method`, the
  run's method; checkpoint `step`, or the newest readable one; nothing else is read."""
  wanted = encoder.nest(encoder.params(abstract_params(config, method)))
  restored, step = _read(workdir, step, wanted)
  return encoder.params(restored), step


def load_params(workdir: str, step: Optional[int] = None
                ) -> Tuple[ml_collections.ConfigDict, Method, Dict[str, PyTree], int]:
  """(config, method, {'params', 'target_params'}, step) of `workdir`'s latest readable
  (or `step`) checkpoint, without the optimizer state: what inspection needs (masks,
  reconstructions, the encoder through `method.eval_encoder().params`)."""
  config = checkpoint.read_config(workdir)
  method = methods.create(config)
  return (config, method) + _read(workdir, step, abstract_params(config, method))


def restore_state(workdir: str, step: Optional[int] = None
                  ) -> Tuple[ml_collections.ConfigDict, TrainState]:
  """(config, the whole TrainState, optimizer state included) of `workdir`'s latest (or
  `step`) checkpoint, on the default device: e.g. to compare a resumed run with an
  uninterrupted one."""
  config = checkpoint.read_config(workdir)
  method = methods.create(config)
  tx = optim.create_optimizer(config, lambda count: 0.0)  # lr values are not part of state
  abstract = abstract_state(method, tx, config,
                            jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  manager = checkpoint.open_for_reading(workdir)
  if step is None:
    restored = checkpoint.restore_latest(manager, abstract)
  elif step in manager.all_steps():
    restored = checkpoint.restore(manager, step, abstract)
  else:
    restored = None
  manager.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} under "
                            f"{manager.directory}: point it at the workdir of a pretraining run "
                            f"(steps there: {manager.all_steps()}).")
  return config, restored[0]
