"""Experiment config files, read from a spec `path[:variant]` as `--config=` of mim_jax.main
reads them (ml_collections.config_flags).

A config file in configs/ (big_vision's style) defines one function per named variant,
each returning a ConfigDict and documented by its docstring's first line, lists them in
`VARIANTS = {name: function}` and has `get_config(arg=<default variant>)` return
`pick(VARIANTS, arg)`. Pieces several config files share (ImageNet, the CIFAR comparison
run) are in configs/common.py, which a file reads with `sibling(__file__, "common.py")`.
`describe` lists the variants of a file (the README's config table is checked against
it). `shrink` makes any variant a seconds-long run on synthetic images: the tests run
every recipe so, and a smoke run is `--config=configs/mae.py:vit_base,shrink`.
"""
import hashlib
import os
import runpy
import types
from typing import Callable, Dict, List, Tuple

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the file in `spec` = 'path[:arg]' (`get_config()` without arg)."""
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} not found (from {spec!r}): give a path "
                            "like configs/mae.py[:variant], relative to the working "
                            "directory.")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(arg) if sep else get_config()


def fingerprint(config: ml_collections.ConfigDict, digits: int) -> str:
  """The first `digits` hex digits of the SHA-1 of `config`'s sorted JSON: the key under
  which the tools file what they computed from a config (compare's workdirs, aot's records)."""
  return hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest()[:digits]


def sibling(config_file: str, name: str) -> types.SimpleNamespace:
  """The names defined by the file `name` next to `config_file` (works wherever the
  config file is run from)."""
  return types.SimpleNamespace(**runpy.run_path(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), name)))


def pick(variants: Dict[str, Callable[[], ml_collections.ConfigDict]],
         arg: str) -> ml_collections.ConfigDict:
  """The config of variant `arg` ('name', or 'name,shrink' for it `shrink`-ed), or an
  error naming the variants."""
  name, sep, option = arg.partition(",")
  if name not in variants or option not in ("", "shrink") or (sep and not option):
    raise ValueError(f"Unknown config variant {arg!r}; choose one of {sorted(variants)} "
                     "(',shrink' after a name: its test-sized run).")
  config = variants[name]()
  return shrink(config) if option else config


def shrink(config: ml_collections.ConfigDict, keep_data: bool = False, *, width: int = 32,
           depth: int = 2, num_heads: int = 4, patch_size: int = 4, image_size: int = 16,
           batch_size: int = 16, num_train_steps: int = 4,
           **overrides) -> ml_collections.ConfigDict:
  """`config`, any config file's, at test size (big_vision's `runlocal`; changed in place
  and returned), its method, losses, optimizer and schedules kept: the model as
  `shrink_model` makes it, the method's geometry fields fitted by its
  `Method.shrink_config`; `image_size` px synthetic images (256 train / 64 eval, 10
  classes), or the recipe's data if `keep_data`; `num_train_steps` steps of `batch_size`
  (warmup 1), logs every step, checkpoints (3 kept), image summaries (2 images) and
  evaluations every 2 steps; data parallel, FSDP (where a test sets it) sharding arrays
  from 64 elements. An evaluation config (configs/eval/) keeps its pretraining run's
  model, data and sharding and gets the run fields it has. `overrides`: flattened fields
  set last, as keywords (**{'optimizer.base_lr': 1e-3})."""
  run = dict(batch_size=batch_size, num_train_steps=num_train_steps, warmup_steps=1,
             log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=3,
             eval_every_steps=2, eval_batch_size=batch_size)
  if "protocol" not in config:  # a pretraining config (an evaluation one keeps its run's)
    from mim_jax import methods  # pylint: disable=import-outside-toplevel  (not to load a file)
    old_patch_size, old_depth = config.model.patch_size, config.model.depth
    shrink_model(config, width, depth, num_heads, patch_size)
    run.update(image_summary_every_steps=2, num_summary_images=2)
    config.sharding.update(mode="data_parallel", fsdp_size=-1)
    if not keep_data:
      config.data.update(source="synthetic", train_split="train", eval_split="test",
                         synthetic_train_size=256, synthetic_eval_size=64, num_classes=10,
                         image_size=image_size)
    methods.METHODS[config.method.name].shrink_config(config, old_patch_size, old_depth,
                                                      resize_data=not keep_data)
  config.update({key: value for key, value in run.items() if key in config})
  if "sharding" in config:
    config.sharding.fsdp_min_size = 64
  config.update_from_flattened_dict(overrides)
  return config


def shrink_model(config: ml_collections.ConfigDict, width: int, depth: int, num_heads: int,
                 patch_size: int) -> ml_collections.ConfigDict:
  """config.model: an encoder `width` wide, `depth` deep, `num_heads` heads, patch
  `patch_size`, no drop path; every other size field (`*_width`, `*_depth`,
  `*_num_heads`: decoders, regressors) width/2, 1 block, 2 heads. config.method's sizes
  to match: hidden dims (`*_hidden`, `*_hidden_dim`) `width`, other dims width/2,
  projectors at most 2 layers."""
  model, method = config.model, config.method
  for key in model:
    if key.endswith("_width"):
      model[key] = width // 2
    elif key.endswith("_depth"):
      model[key] = 1
    elif key.endswith("_num_heads"):
      model[key] = 2
  model.update(width=width, depth=depth, num_heads=num_heads, patch_size=patch_size,
               drop_path_rate=0.0)
  for key in method:
    if key.endswith(("_hidden", "_hidden_dim")):
      method[key] = width
    elif key.endswith("_dim"):
      method[key] = width // 2
    elif key.endswith("_depth"):
      method[key] = min(method[key], 2)
  return config


def describe(path: str) -> List[Tuple[str, str]]:
  """[(variant name, first line of its docstring)] of the config file at `path`, in the
  order of its VARIANTS ([('', get_config's)] for a file without variants)."""
  module = runpy.run_path(path)
  variants = module.get("VARIANTS")
  if variants is None:
    return [("", first_line(module["get_config"].__doc__))]
  return [(name, first_line(function.__doc__)) for name, function in variants.items()]


def placeholder(field_type):
  """A field of `field_type` that is None until set (ml_collections' placeholder)."""
  return ml_collections.config_dict.placeholder(field_type)


def first_line(doc) -> str:
  """The first sentence-line of a docstring, joined across its wrapped lines up to the
  first blank line."""
  paragraph = (doc or "").strip().split("\n\n")[0]
  return " ".join(line.strip() for line in paragraph.splitlines())
