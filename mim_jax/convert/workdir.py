"""Converted parameters -> a pretraining workdir that `mim_jax.evaluation.pretrained` and
evaluation, fine-tuning and `to-timm` read, like one our trainer wrote.

`write_workdir` builds the method's train state from `config` (seeded init), puts the
converted encoder where the method's `eval_encoder` reads it and the other converted
parts (e.g. MAE's decoder) in their place (each must exist in the model with the same
shape), recomputes the EMA targets from them and a fresh optimizer state, and saves it as
checkpoint step 0 with `config.json`. Parameters the checkpoint does not provide (e.g.
CAE's regressor and decoder, MAE's decoder for encoder-only checkpoints) keep their
initial values; they are listed in the log.
"""
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mim_jax import checkpoint, methods, optim
from mim_jax.training.state import initializer


def converted_config(config: ml_collections.ConfigDict, dims: Mapping[str, Any],
                     image_size: int, model_fields: Optional[Mapping[str, Any]] = None
                     ) -> ml_collections.ConfigDict:
  """`config` (a recipe, e.g. configs/cae.py:vit_base) with `config.model` and
  `data.image_size` describing the converted encoder; `model_fields` (e.g. the decoder's
  size) override further model fields."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(patch_size=dims["patch_size"], width=dims["width"], depth=dims["depth"],
                      num_heads=dims["num_heads"], mlp_ratio=float(dims["mlp_ratio"]),
                      layer_scale_init=dims.get("layer_scale_init"),
                      pos_embedding=dims.get("pos_embedding", "sincos"))
  if model_fields:
    config.model.update(**model_fields)
  config.data.image_size = image_size
  return config


def _overlay(initial, converted, path=""):
  """`initial` with the leaves of `converted` put in (same shapes); logs the rest."""
  if not isinstance(converted, Mapping):
    want, got = tuple(np.shape(initial)), tuple(np.shape(converted))
    if want != got:
      raise ValueError(f"Converted parameter {path} has shape {got}; the model built from the "
                       f"config expects {want}.")
    return jnp.asarray(converted, jnp.asarray(initial).dtype)
  if not isinstance(initial, Mapping):
    raise ValueError(f"Converted parameter {path} is a tree; the model has an array there.")
  unknown = sorted(set(converted) - set(initial))
  if unknown:
    raise ValueError(f"Converted parameters {[f'{path}/{k}'.lstrip('/') for k in unknown]} do "
                     f"not exist in the model built from the config (it has "
                     f"{sorted(initial)} under '{path or '/'}').")
  out = {}
  for k, v in initial.items():
    name = f"{path}/{k}".lstrip("/")
    if k in converted:
      out[k] = _overlay(v, converted[k], name)
    else:
      logging.info("%s: not in the checkpoint, keeps its initial value.", name)
      out[k] = v
  return out


def write_workdir(workdir: str, config: ml_collections.ConfigDict, encoder: Mapping[str, Any],
                  other_params: Optional[Mapping[str, Any]] = None) -> None:
  """Save the converted `encoder` params (placed where `method.eval_encoder()` reads them)
  and `other_params` (a sub-tree of the method's params, e.g. {'decoder': ...}) as step 0
  of a new pretraining workdir. Refuses a workdir that already has checkpoints."""
  method = methods.create(config)
  manager = checkpoint.create_manager(workdir, config)
  if manager.all_steps():
    manager.close()
    raise FileExistsError(f"{manager.directory} already holds checkpoints "
                          f"{manager.all_steps()}; choose a new --output directory.")
  tx = optim.create_optimizer(config, lambda count: 0.0)
  init_fn, rng, batch = initializer(method, tx, config)
  state = jax.jit(init_fn)(rng, batch)
  online = method.eval_encoder().nest(dict(encoder))["params"]  # e.g. {'encoder': ...}
  new_params = _overlay(state.params, {**online, **(other_params or {})})
  state = state.replace(params=new_params,
                        target_params=method.init_targets(jax.random.PRNGKey(0), batch,
                                                          new_params),
                        opt_state=tx.init(new_params))
  checkpoint.write_config(workdir, config)
  data_state = {"next_element": [0], "skipped_images": [0],
                "global_batch_size": config.batch_size}
  checkpoint.save(manager, 0, state, data_state)
  manager.wait_until_finished()
  manager.close()
