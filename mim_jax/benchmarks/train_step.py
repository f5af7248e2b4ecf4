"""Train-step throughput of the pretraining configs on the local devices.

python -m mim_jax.benchmarks.train_step [--methods=mae,simmim,...] [--batch_size=8] \
    [--steps=10] [--peak_tflops=...] [--dtype=float32|bfloat16] [--remat=none|full|...] \
    [--scan_layers] [--attention_impl=xla|cudnn]
python -m mim_jax.benchmarks.train_step --config=configs/mae_vit_base.py [--config.x=...]

For each method's ViT-B/16 config (configs/<method>_vit_base.py, at its own image size:
224 px, 280 px for Latent MIM's grid with gaps), or for `--config` alone, prints compile
time, the median step time over `--steps` timed steps (after one warm-up step), images/s,
FLOPs per image and, with --peak_tflops (of all local devices together), the MFU.

FLOPs: `step` is XLA's cost-analysis count of the compiled train step (recomputation
under remat included); `model` is the same count for the step compiled without remat
(forward passes, backward passes where gradients flow, e.g. not through EMA targets,
and AdamW; the PaLM definition up to the optimizer's few FLOPs per parameter).
MFU = model FLOPs · images/s / peak. (3 × the forward loss would overcount methods with a
stop-gradient target encoder: Latent MIM, PCAE, CAE.) Random images, no input pipeline
(see input_pipeline.py).
"""
import importlib.util
import os
import time
from typing import Any, Dict, List

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mim_jax import methods, optim, sharding, train
from mim_jax.models import vit

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "One experiment config file (overrides "
                                "--methods).")
flags.DEFINE_list("methods", ["mae", "simmim", "cae", "latent_mim", "pcae", "multiview_mae"],
                  "Methods whose configs/<method>_vit_base.py to time.")
flags.DEFINE_integer("batch_size", 8, "Global batch of the --methods configs.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of all local devices together, for "
                   "MFU (e.g. 989 for one H100 SXM in bf16).")
flags.DEFINE_string("dtype", None, "Overrides config.model.dtype (float32 | bfloat16).")
flags.DEFINE_string("remat", None, "Overrides config.model.remat (a policy name).")
flags.DEFINE_bool("scan_layers", None, "Overrides config.model.scan_layers.")
flags.DEFINE_string("attention_impl", None, "Overrides config.model.attention_impl.")

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load_config(path: str):
  """get_config() of a config file, with its default argument."""
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


# The benchmarked step's lr schedule: 1000 steps, 10 of warmup. Its length and shape change
# a few scalar operations, no array shape and no FLOP count of the step.
TOTAL_STEPS = 1000


def step_parts(config):
  """(method, optimizer, lr schedule) of `config`'s train step as this benchmark builds it:
  the config's method and optimizer, on the nominal TOTAL_STEPS schedule."""
  lr_fn = optim.lr_schedule(1e-4, TOTAL_STEPS, 10)
  return methods.create(config), optim.create_optimizer(config, lr_fn), lr_fn


def random_batch(config, method, batch_size: int) -> Dict[str, np.ndarray]:
  """Random images with `method.batch_keys`; views (if several) cover the whole image,
  unflipped ('crop_box' [B, V, 4] as (y0, x0, h, w) fractions, 'flip' [B, V])."""
  size = config.data.image_size
  views = (method.num_views,) if method.num_views > 1 else ()
  batch = {"image": np.random.default_rng(0).normal(
      size=(batch_size,) + views + (size, size, 3)).astype(np.float32),
           "crop_box": np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32),
                               (batch_size,) + views + (1,)),
           "flip": np.zeros((batch_size,) + views, np.bool_)}
  return {k: batch[k] for k in method.batch_keys}


class CompiledStep:
  """The jitted train step of `config` on random images, compiled once; `run(n)` times n
  steps. compile_s: lower + compile of the step; step_flops: XLA's count for one step;
  model_flops: XLA's count for one step compiled without remat (with
  `count_model_flops`)."""

  def __init__(self, config, count_model_flops: bool = True):
    train.validate_config(config, jax.device_count(), jax.process_count())
    self.config = config
    mesh = sharding.create_mesh(config)
    method, tx, lr_fn = step_parts(config)
    batch = random_batch(config, method, config.batch_size)
    self.state, shardings = train.create_train_state(
        method, tx, config, mesh, train.sample_batch(config, method))
    step_fn = train.jit_train_step(method, tx, lr_fn, config, TOTAL_STEPS, mesh, shardings)
    self.batch = sharding.global_batch(batch, sharding.batch_sharding(mesh))
    start = time.perf_counter()
    self.compiled = step_fn.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.step_flops = _flops(self.compiled)
    self.model_flops = float("nan")
    if count_model_flops:
      self.model_flops = self.step_flops
      if vit.remat_policy_name(config.model.get("remat", False)) != "none":
        plain = config.copy_and_resolve_references()
        plain.model.remat = "none"
        self.model_flops = _flops(
            train.jit_train_step(methods.create(plain), tx, lr_fn, plain, TOTAL_STEPS, mesh,
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


def measure_train_step(config, steps: int) -> Dict[str, Any]:
  """Compile and time the train step of `config` on random images: compile_s, step_s
  (median of `steps` timed steps after one warm-up step), times, flops (XLA's count for
  one step) and the last loss."""
  step = CompiledStep(config, count_model_flops=False)
  step.run(steps)
  return dict(compile_s=step.compile_s, step_s=float(np.median(step.times)), times=step.times,
              flops=step.step_flops, final_loss=step.loss)


def apply_overrides(config, batch_size=None) -> None:
  """The command-line speed options and batch size onto `config`."""
  if batch_size is not None:
    config.batch_size = batch_size
  for field in ("dtype", "remat", "scan_layers", "attention_impl"):
    value = getattr(FLAGS, field)
    if value is not None:
      config.model[field] = value


def describe(config) -> str:
  m = config.model
  return (f"method={config.method.name} width={m.width} depth={m.depth} patch={m.patch_size} "
          f"image={config.data.image_size} batch={config.batch_size} dtype={m.dtype} "
          f"remat={m.get('remat')} scan_layers={m.get('scan_layers')} "
          f"attention_impl={m.get('attention_impl')} devices={jax.device_count()} "
          f"({jax.devices()[0].platform})")


def print_summary(config, result: Dict[str, Any]) -> None:
  print(describe(config))
  line = (f"  compile_s={result['compile_s']:.1f} step_s_median={result['step_s']:.4f} "
          f"images_per_s={result['images_per_s']:.2f} "
          f"model_gflops_per_image={result['model_gflops_per_image']:.2f} (XLA, no remat) "
          f"step_gflops_per_image={result['step_gflops_per_image']:.2f} (XLA step)")
  if "mfu" in result:
    line += f" mfu={result['mfu']:.3f}"
  print(line + f" final_loss={result['final_loss']:.4f}", flush=True)


def main(argv):
  del argv
  if FLAGS.config is not None:
    configs = [FLAGS.config]
    apply_overrides(FLAGS.config)
  else:
    configs = []
    for name in FLAGS.methods:
      config = load_config(os.path.join(CONFIG_DIR, f"{name}_vit_base.py"))
      config.data.source = "synthetic"  # the step runs on random images; no ImageNet needed
      apply_overrides(config, FLAGS.batch_size)
      configs.append(config)
  for config in configs:
    step = CompiledStep(config)
    step.run(FLAGS.steps)
    print_summary(config, step.summary(FLAGS.peak_tflops))


if __name__ == "__main__":
  app.run(main)
