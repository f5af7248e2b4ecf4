"""Train-step throughput of any pretraining config on the local devices.

python -m mim_jax.benchmarks.train_step --config=configs/mae_vit_base.py \
    --config.batch_size=8 [--steps=10] [--peak_tflops=...]

Prints compile time, median step time over `--steps` timed steps (after one warm-up
step), images/s, XLA's FLOP count of one step per image and, with --peak_tflops, the
model FLOPs utilisation. Random images; no input pipeline.
"""
import time
from typing import Any, Dict

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mim_jax import methods, optim, sharding, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of all devices together, for MFU.")
flags.mark_flags_as_required(["config"])


def measure_train_step(config, steps: int) -> Dict[str, Any]:
  """Compile and time the train step of `config` on random images: compile_s, step_s
  (median of `steps` timed steps after one warm-up step), times, flops (XLA's count for
  one step) and the last loss."""
  train.validate_config(config, jax.device_count(), jax.process_count())
  mesh = sharding.create_mesh(config)
  method = methods.create(config)
  total_steps = 1000
  lr_fn = optim.lr_schedule(1e-4, total_steps, 10)
  tx = optim.create_optimizer(config, lr_fn)
  size = config.data.image_size
  shape = (config.batch_size,) + ((method.num_views,) if method.num_views > 1 else ()) + (
      size, size, 3)
  images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  state, shardings = train.create_train_state(method, tx, config, mesh, {"image": images[:1]})
  step_fn = train.jit_train_step(method, tx, lr_fn, config, total_steps, mesh, shardings)
  batch = sharding.global_batch({"image": images}, sharding.batch_sharding(mesh))

  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return dict(compile_s=compile_s, step_s=float(np.median(times)), times=times, flops=flops,
              final_loss=float(metrics["loss"]))


def main(argv):
  del argv
  config = FLAGS.config
  result = measure_train_step(config, FLAGS.steps)
  step_s, times, flops = result["step_s"], result["times"], result["flops"]
  size = config.data.image_size
  print(f"method={config.method.name} width={config.model.width} depth={config.model.depth} "
        f"patch={config.model.patch_size} image={size} batch={config.batch_size} "
        f"dtype={config.model.dtype} devices={jax.device_count()} ({jax.devices()[0].platform})")
  print(f"compile_s={result['compile_s']:.1f}")
  print(f"step_s_median={step_s:.4f} (min {min(times):.4f}, max {max(times):.4f})")
  print(f"images_per_s={config.batch_size / step_s:.2f}")
  print(f"step_gflops_per_image={flops / config.batch_size / 1e9:.2f}")
  if FLAGS.peak_tflops > 0:
    print(f"mfu={flops / step_s / (FLAGS.peak_tflops * 1e12):.3f}")
  print(f"final_loss={result['final_loss']:.4f}")


if __name__ == "__main__":
  app.run(main)
