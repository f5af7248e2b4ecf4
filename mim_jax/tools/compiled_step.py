"""A config's train step compiled on random images, without flags: compile time, XLA's
FLOPs count, timed steps and their summary (used by the step programs train_step,
profile_step and aot, and by compare for FLOPs and CPU time per step).

Evaluation steps: `evaluation_config` turns a streamed evaluation protocol (fine-tuning,
the published linear probe: mim_jax/evaluation/protocols.py) on a pretraining config into
a trainer config whose step is built and timed like a pretraining method's.

FLOPs: `step_flops` is XLA's cost-analysis count of the compiled train step
(recomputation under remat included); `model_flops` is the same count for the step
compiled without remat (forward passes, backward passes where gradients flow, e.g. not
through EMA targets, and AdamW; the PaLM definition up to the optimizer's few FLOPs per
parameter). Both are counts of the program one device runs: with several devices, each
runs its share of the batch and its own copy of replicated work (e.g. the optimizer
update in data-parallel mode). Random images, no input pipeline.
"""
import os
import time
from typing import Any, Callable, Dict, List, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax import config_files, methods, optim, sharding
from mim_jax.evaluation import downstream, protocols
from mim_jax.models import vit
from mim_jax.training import config as train_config
from mim_jax.training.state import create_train_state
from mim_jax.training.train_step import jit_train_step


CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def vit_base_config(method: str):
  """configs/<method>.py:vit_base, wherever the program runs from."""
  return config_files.load(os.path.join(CONFIG_DIR, f"{method}.py") + ":vit_base")


# The ViT-B recipe of each streamed evaluation protocol (configs/eval/): MAE's published
# linear probe (main_linprobe.py, batch 16384) and fine-tuning (FINETUNE.md, batch 1024).
EVAL_CONFIGS = {"linear_probe": "eval/linear_probe.py:published",
                "finetune": "eval/finetune.py:vit_base"}
# The classes of ImageNet-1k, on which the published protocols train their head.
IMAGENET_CLASSES = 1000


def evaluation_config(evaluation: str, pretrain_config) -> ml_collections.ConfigDict:
  """The trainer config of a streamed evaluation on `pretrain_config`'s encoder, on
  synthetic images (no files) with ImageNet-1k's 1000-class head unless the evaluation
  config sets config.num_classes. `evaluation`: a name of EVAL_CONFIGS or a config spec
  (configs/eval/finetune.py:vit_large). Resolved by downstream.resolve_config (the
  pretraining model, seed, data, pooling); the pretraining config rides along as
  `pretrain_config`, from which `create_method` builds the protocol's method."""
  spec = (os.path.join(CONFIG_DIR, EVAL_CONFIGS[evaluation]) if evaluation in EVAL_CONFIGS
          else evaluation)
  if not os.path.isfile(spec.partition(":")[0]):
    raise ValueError(f"Unknown evaluation {evaluation!r}: name one of {sorted(EVAL_CONFIGS)} "
                     "or give a config spec (configs/eval/finetune.py:vit_large).")
  config = config_files.load(spec)
  streamed = protocols.names("streamed")
  if config.get("features") != "streamed" or config.protocol not in streamed:
    raise ValueError(f"{evaluation!r} is not a streamed evaluation: name one of "
                     f"{sorted(EVAL_CONFIGS)} or a configs/eval/ spec with features="
                     f"'streamed' and a protocol in {sorted(streamed)}.")
  if config.num_classes is None:
    config.num_classes = IMAGENET_CLASSES
  pretrain = pretrain_config.copy_and_resolve_references()
  pretrain.data.source = "synthetic"
  resolved = downstream.resolve_config(config, pretrain)
  resolved.pretrain_config = ml_collections.ConfigDict(pretrain.to_dict())
  return resolved


def step_name(config) -> str:
  """The method of `config`, or 'protocol (pretraining method)' for an evaluation."""
  if "pretrain_config" in config:
    return f"{config.protocol} ({config.pretrain_config.method.name})"
  return config.method.name


def xla_flops(compiled) -> float:
  """XLA's cost-analysis FLOPs of a compiled function (0 when it has none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


# Square matmul sizes whose best fp32 rate is taken as the host's peak (mim_jax/tools/
# train_step.py --measure_peak): large enough for the GEMM kernels' full speed, small
# enough to time in seconds.
MATMUL_SIZES = (1024, 2048, 4096)


def matmul_rates(matmul_of: Callable[[int], Callable[[], Any]], sizes: Sequence[int],
                 repeats: int) -> Dict[int, float]:
  """{n: TFLOP/s} of n×n·n×n matmuls: `matmul_of(n)` returns a call that does one and
  waits for it; the fastest of `repeats` timed calls after a warm-up."""
  rates = {}
  for n in sizes:
    call = matmul_of(n)
    call()
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      call()
      best = min(best, time.perf_counter() - start)
    rates[n] = 2 * n**3 / best / 1e12
  return rates


def matmul_tflops(sizes: Sequence[int] = MATMUL_SIZES, repeats: int = 5) -> Dict[int, float]:
  """XLA's fp32 matmul rates on the default device (`matmul_rates`)."""
  rng = np.random.default_rng(0)
  matmul = jax.jit(jnp.matmul)

  def matmul_of(n):
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32)) for _ in range(2))
    return lambda: matmul(a, b).block_until_ready()

  return matmul_rates(matmul_of, sizes, repeats)


# The step's lr schedule: 1000 steps, 10 of warmup. Its length and shape change a few scalar
# operations, no array shape and no FLOP count of the step.
TOTAL_STEPS = 1000


def create_method(config):
  """`config`'s method for TOTAL_STEPS steps: the pretraining method, or for an
  `evaluation_config` its protocol's streamed method on the pretraining config's encoder
  with `config.model` (so that the speed options and remat set on `config` reach the
  encoder)."""
  if "pretrain_config" not in config:
    return methods.create(config, TOTAL_STEPS)
  pretrain = ml_collections.ConfigDict(config.pretrain_config.to_dict())
  pretrain.model = ml_collections.ConfigDict(config.model.to_dict())
  return protocols.get(config.protocol).streamed(config, TOTAL_STEPS, pretrain)


def step_parts(config):
  """(method, optimizer, lr schedule) of `config`'s train step as the tools build it:
  the config's method (`create_method`) and optimizer, on the nominal TOTAL_STEPS
  schedule."""
  lr_fn = optim.lr_schedule(1e-4, TOTAL_STEPS, 10)
  return create_method(config), optim.create_optimizer(config, lr_fn), lr_fn


def random_batch(config, method, batch_size: int) -> Dict[str, np.ndarray]:
  """Random images with `method.batch_keys`; views (if several) cover the whole image,
  unflipped ('crop_box' [B, V, 4] as (y0, x0, h, w) fractions, 'flip' [B, V]); labels
  cycle through config.data.num_classes."""
  size = config.data.image_size
  views = (method.num_views,) if method.num_views > 1 else ()
  batch = {"image": np.random.default_rng(0).normal(
      size=(batch_size,) + views + (size, size, 3)).astype(np.float32),
           "crop_box": np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32),
                               (batch_size,) + views + (1,)),
           "flip": np.zeros((batch_size,) + views, np.bool_),
           "label": np.arange(batch_size, dtype=np.int32) % config.data.num_classes}
  return {k: batch[k] for k in method.batch_keys}


class CompiledStep:
  """The jitted train step of `config` on random images, compiled once; `run(n)` times n
  steps. compile_s: lower + compile of the step; step_flops: XLA's count for one step;
  model_flops: XLA's count for one step compiled without remat (with
  `count_model_flops`)."""

  def __init__(self, config, count_model_flops: bool = True):
    train_config.validate(config, jax.device_count(), jax.process_count())
    self.config = config
    mesh = sharding.create_mesh(config)
    method, tx, lr_fn = step_parts(config)
    batch = random_batch(config, method, config.batch_size)
    self.state, shardings = create_train_state(method, tx, config, mesh)
    step_fn = jit_train_step(method, tx, lr_fn, config, mesh, shardings)
    self.batch = sharding.global_batch(batch, sharding.batch_sharding(mesh))
    start = time.perf_counter()
    self.compiled = step_fn.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.step_flops = xla_flops(self.compiled)
    self.model_flops = float("nan")
    if count_model_flops:
      self.model_flops = self.step_flops
      if vit.remat_policy_name(config.model.remat) != "none":
        plain = config.copy_and_resolve_references()
        plain.model.remat = "none"
        self.model_flops = xla_flops(
            jit_train_step(create_method(plain), tx, lr_fn, plain, mesh,
                           shardings).lower(self.state, self.batch).compile())
    self.times: List[float] = []
    self.loss = float("nan")
    self.run(1, record=False)  # warm-up

  def run(self, steps: int, record: bool = True) -> List[float]:
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    self.loss = float(metrics["loss"])
    if record:
      self.times += times
    return times

  def summary(self, peak_tflops: float = 0.0) -> Dict[str, Any]:
    batch = self.config.batch_size
    step_s = float(np.median(self.times))
    model_flops = self.model_flops / batch
    out = dict(compile_s=self.compile_s, step_s=step_s, images_per_s=batch / step_s,
               model_gflops_per_image=model_flops / 1e9,
               step_gflops_per_image=self.step_flops / batch / 1e9, final_loss=self.loss)
    if peak_tflops > 0:
      out["mfu"] = model_flops * batch / step_s / (peak_tflops * 1e12)
    return out


def results_table(measured, steps: int, mfu_label: str = "MFU") -> str:
  """Markdown table of (config, `CompiledStep.summary`) pairs timed over `steps` steps."""
  lines = ["| config | image | batch | dtype / remat / scan / attention | devices | compile s | "
           f"s/step | images/s | model GFLOP/image | step GFLOP/image | {mfu_label} |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for config, r in measured:
    m = config.model
    mfu = f"{r['mfu']:.1%}" if "mfu" in r else "—"
    lines.append(
        f"| {step_name(config)} {m.width}w×{m.depth}, patch {m.patch_size} | "
        f"{config.data.image_size} | {config.batch_size} | {m.dtype} / {m.get('remat')} / "
        f"{m.get('scan_layers')} / {m.get('attention_impl')} | {jax.device_count()} × "
        f"{jax.devices()[0].platform} | {r['compile_s']:.1f} | {r['step_s']:.4g} | "
        f"{r['images_per_s']:.3g} | {r['model_gflops_per_image']:.3g} | "
        f"{r['step_gflops_per_image']:.3g} | {mfu} |")
  return "\n".join(lines) + f"\n\nMedian of {steps} timed steps after one warm-up step.\n"


