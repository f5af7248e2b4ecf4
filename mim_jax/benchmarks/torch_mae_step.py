"""The official facebookresearch/mae PyTorch training step against ours, interleaved.

python -m mim_jax.benchmarks.torch_mae_step --mae_repo=PATH [--timm_path=DIR] \
    [--batch_size=8] [--steps=3] [--rounds=5] [--nojax]

PATH is a checkout of facebookresearch/mae; its `models_mae.py` needs timm's `Block` and
`PatchEmbed`, from an installed timm or from `--timm_path` (e.g. a
`pip install --target DIR --no-deps timm==0.4.12`; neither torch, timm nor the official code
is a dependency of mim_jax). The official step (main_pretrain.py + engine_pretrain.py
`train_one_epoch` at fp32, no AMP on CPU): `mae_vit_base_patch16(norm_pix_loss=True)`,
`loss, _, _ = model(samples, mask_ratio=0.75)`, backward, AdamW(betas (0.9, 0.95),
weight decay 0.05 except biases and 1-D parameters, timm `add_weight_decay`), zero_grad.
Ours: configs/mae.py:vit_base at the same batch through mim_jax.train's step (fp32).

Both are built and warmed up once in this process; then each of `--rounds` rounds runs
`--steps` steps of ours and `--steps` of the official step, alternating which goes first,
so that both see the same machine load. Prints each round's medians and, over all rounds,
the median step times, images/s and ours/official throughput ratio.
"""
import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import time
import types
from typing import Callable, List

import numpy as np
from absl import app, flags

from mim_jax.benchmarks.compiled_step import CompiledStep, vit_base_config
from mim_jax.benchmarks.train_step import FLAGS, apply_overrides, describe

flags.DEFINE_string("mae_repo", None, "Path of a facebookresearch/mae checkout.")
flags.DEFINE_string("timm_path", None, "Directory to put first on sys.path for timm.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds of ours and the official step.")
flags.DEFINE_bool("jax", True, "Also time ours, interleaved (--nojax: official only).")
flags.mark_flags_as_required(["mae_repo"])


class _PermissiveModule(types.ModuleType):
  """A module whose every attribute is a fresh empty class."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return type(name, (), {})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Stands in for torchvision, which timm imports for its data transforms and frozen
  batch norm only (unused by the MAE model), when no torchvision matches this torch."""

  def find_spec(self, name, path, target=None):
    if name == "torchvision" or name.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    return _PermissiveModule(spec.name)

  def exec_module(self, module):
    module.__path__ = []


def import_official_mae(mae_repo: str, timm_path: str = None):
  """models_mae from the checkout, with a working timm."""
  if timm_path:
    sys.path.insert(0, timm_path)
  try:
    import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except (ImportError, RuntimeError):
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
      del sys.modules[name]
    sys.meta_path.insert(0, _TorchvisionStub())
  if not hasattr(np, "float"):  # mae/util/pos_embed.py uses np.float (gone in NumPy 1.24)
    np.float = float
  sys.path.insert(0, os.path.abspath(mae_repo))
  import models_mae  # pylint: disable=import-outside-toplevel
  if "qk_scale" not in inspect.signature(models_mae.Block.__init__).parameters:
    # timm >= 0.4.10 dropped `qk_scale` (None there = the default head_dim ** -0.5).
    timm_block = models_mae.Block
    models_mae.Block = lambda *args, qk_scale=None, **kwargs: timm_block(*args, **kwargs)
  return models_mae


def official_step(models_mae, batch_size: int) -> Callable[[], float]:
  """One official fp32 training step on fixed random images; returns the loss."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = models_mae.mae_vit_base_patch16(norm_pix_loss=True)
  model.train()
  decay, no_decay = [], []
  for name, param in model.named_parameters():
    (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
  optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                 {"params": decay, "weight_decay": 0.05}],
                                lr=1e-4, betas=(0.9, 0.95))
  samples = torch.randn(batch_size, 3, 224, 224)

  def step() -> float:
    loss, _, _ = model(samples, mask_ratio=0.75)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()

  return step


def time_steps(step: Callable[[], float], steps: int) -> List[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def main(argv):
  del argv
  import torch  # pylint: disable=import-outside-toplevel
  models_mae = import_official_mae(FLAGS.mae_repo, FLAGS.timm_path)
  timm = sys.modules.get("timm")
  batch = FLAGS.batch_size
  torch_step = official_step(models_mae, batch)
  torch_step()  # warm-up
  print(f"official: facebookresearch/mae models_mae.mae_vit_base_patch16 fp32 batch={batch} "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) timm "
        f"{getattr(timm, '__version__', '?')}", flush=True)
  ours = None
  if FLAGS.jax:
    config = vit_base_config("mae")
    apply_overrides(config, batch)
    ours = CompiledStep(config, count_model_flops=False)
    print(f"ours: {describe(config)} compile_s={ours.compile_s:.1f}", flush=True)
  official_times: List[float] = []
  for r in range(FLAGS.rounds):
    line = f"round {r}:"
    order = ["ours", "official"] if r % 2 == 0 else ["official", "ours"]
    for name in order:
      if name == "ours" and ours is not None:
        line += f" ours {np.median(ours.run(FLAGS.steps)):.3f} s"
      elif name == "official":
        times = time_steps(torch_step, FLAGS.steps)
        official_times += times
        line += f" official {np.median(times):.3f} s"
    print(line, flush=True)
  official_s = float(np.median(official_times))
  print(f"official: step_s_median={official_s:.3f} images_per_s={batch / official_s:.2f} "
        f"({len(official_times)} steps)")
  if ours is not None:
    ours_s = float(np.median(ours.times))
    print(f"ours: step_s_median={ours_s:.3f} images_per_s={batch / ours_s:.2f} "
          f"({len(ours.times)} steps)")
    print(f"ours/official images_per_s: {official_s / ours_s:.2f}x")


if __name__ == "__main__":
  app.run(main)
