"""The official facebookresearch/mae PyTorch training step, for the programs that run it
beside ours with `--mae_repo=PATH [--timm_path=DIR]` (`define_flags`): train_step times it
interleaved with ours, profile_step profiles it.

PATH is a checkout of facebookresearch/mae; its `models_mae.py` needs timm's `Block` and
`PatchEmbed`, from an installed timm or from `--timm_path` (e.g. a
`pip install --target DIR --no-deps timm==0.4.12`; neither torch, timm nor the official code
is a dependency of mim_jax). The official step (main_pretrain.py + engine_pretrain.py
`train_one_epoch` at fp32, no AMP on CPU): `mae_vit_base_patch16(norm_pix_loss=True)`,
`loss, _, _ = model(samples, mask_ratio=0.75)`, backward, AdamW(betas (0.9, 0.95),
weight decay 0.05 except biases and 1-D parameters, timm `add_weight_decay`), zero_grad.
"""
import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import time
import types
from typing import Callable, Dict, List, Sequence

import numpy as np
from absl import flags

from mim_jax.tools.compiled_step import MATMUL_SIZES, matmul_rates


def define_flags() -> None:
  """--mae_repo and --timm_path."""
  flags.DEFINE_string("mae_repo", None, "A facebookresearch/mae checkout: run MAE's official "
                      "step beside ours.")
  flags.DEFINE_string("timm_path", None, "Directory to put first on sys.path for timm.")


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


def torch_matmul_tflops(sizes: Sequence[int] = MATMUL_SIZES,
                        repeats: int = 5) -> Dict[int, float]:
  """torch's fp32 matmul rates on the CPU (compiled_step.matmul_rates, as XLA's)."""
  import torch  # pylint: disable=import-outside-toplevel

  def matmul_of(n):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: torch.matmul(a, b)

  return matmul_rates(matmul_of, sizes, repeats)


def describe_torch() -> str:
  import torch  # pylint: disable=import-outside-toplevel
  timm = sys.modules.get("timm")
  return (f"torch {torch.__version__} ({torch.get_num_threads()} threads), timm "
          f"{getattr(timm, '__version__', '?')}")


def interleave(ours, official: Callable[[], float], rounds: int, steps: int) -> List[float]:
  """`rounds` rounds of `steps` steps of ours (a CompiledStep, which records its times) and
  `steps` of the official step, alternating which goes first so that both see the same
  machine load; prints each round's medians and returns the official step times."""
  official_times: List[float] = []
  for r in range(rounds):
    line = f"round {r}:"
    for name in (["ours", "official"] if r % 2 == 0 else ["official", "ours"]):
      if name == "ours":
        line += f" ours {np.median(ours.run(steps)):.3f} s"
      else:
        times = time_steps(official, steps)
        official_times += times
        line += f" official {np.median(times):.3f} s"
    print(line, flush=True)
  return official_times
