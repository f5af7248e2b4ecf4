"""Experiment config files, read from a spec `path[:variant]` as `--config=` of mim_jax.main
reads them (ml_collections.config_flags).

A config file in configs/ (big_vision's style) defines one function per named variant,
each returning a ConfigDict and documented by its docstring's first line, lists them in
`VARIANTS = {name: function}` and has `get_config(arg=<default variant>)` return
`pick(VARIANTS, arg)`. Pieces several config files share (ImageNet, the CIFAR comparison
run, the tests' tiny run) are in configs/common.py, which a file reads with
`sibling(__file__, "common.py")`. `describe` lists the variants of a file (the README's
config table is checked against it).
"""
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


def sibling(config_file: str, name: str) -> types.SimpleNamespace:
  """The names defined by the file `name` next to `config_file` (works wherever the
  config file is run from)."""
  return types.SimpleNamespace(**runpy.run_path(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), name)))


def pick(variants: Dict[str, Callable[[], ml_collections.ConfigDict]],
         arg: str) -> ml_collections.ConfigDict:
  """The config of variant `arg`, or an error naming the variants."""
  if arg not in variants:
    raise ValueError(f"Unknown config variant {arg!r}; choose one of {sorted(variants)}.")
  return variants[arg]()


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
