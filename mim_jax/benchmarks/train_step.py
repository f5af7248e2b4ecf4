"""Train-step throughput of the pretraining configs on the local devices.

python -m mim_jax.benchmarks.train_step [--methods=mae,simmim,...] [--batch_size=8] \
    [--steps=10] [--peak_tflops=...] [--dtype=float32|bfloat16] [--remat=none|full|...] \
    [--scan_layers] [--attention_impl=xla|cudnn] [--results=docs/RESULTS.md]
python -m mim_jax.benchmarks.train_step --config=configs/mae.py:vit_base [--config.x=...]

For each method's ViT-B/16 config (configs/<method>.py:vit_base, at its own image size:
224 px, 280 px for Latent MIM's grid with gaps), or for `--config` alone, prints compile
time, the median step time over `--steps` timed steps (after one warm-up step), images/s,
FLOPs per image and, with --peak_tflops (of all local devices together), the MFU. With
--results, the same figures replace the 'train_step' section (--results_section) of that
document, with the command, machine and date (mim_jax/benchmarks/results.py).

FLOPs (`step`, `model`: with and without remat) as mim_jax/benchmarks/compiled_step.py
counts them; MFU = model FLOPs · images/s / peak. (3 × the forward loss would overcount
methods with a stop-gradient target encoder: Latent MIM, PCAE, CAE.) Random images, no
input pipeline (see input_pipeline.py).
"""
from typing import Any, Dict

import jax
from absl import app, flags
from ml_collections import config_flags

from mim_jax.benchmarks import results
from mim_jax.benchmarks.compiled_step import CompiledStep, results_table, vit_base_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "One experiment config file (overrides "
                                "--methods).")
flags.DEFINE_list("methods", ["mae", "simmim", "cae", "latent_mim", "pcae", "multiview_mae"],
                  "Methods whose configs/<method>.py:vit_base to time.")
flags.DEFINE_integer("batch_size", 8, "Global batch of the --methods configs.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of all local devices together, for "
                   "MFU (e.g. 989 for one H100 SXM in bf16).")
flags.DEFINE_string("dtype", None, "Overrides config.model.dtype (float32 | bfloat16).")
flags.DEFINE_string("remat", None, "Overrides config.model.remat (a policy name).")
flags.DEFINE_bool("scan_layers", None, "Overrides config.model.scan_layers.")
flags.DEFINE_string("attention_impl", None, "Overrides config.model.attention_impl.")
results.define_flags("train_step")

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
  results.requested_section()  # a bad --results_section fails first
  if FLAGS.config is not None:
    configs = [FLAGS.config]
    apply_overrides(FLAGS.config)
  else:
    configs = []
    for name in FLAGS.methods:
      config = vit_base_config(name)
      config.data.source = "synthetic"  # the step runs on random images; no ImageNet needed
      apply_overrides(config, FLAGS.batch_size)
      configs.append(config)
  measured = []
  for config in configs:
    step = CompiledStep(config)
    step.run(FLAGS.steps)
    measured.append((config, step.summary(FLAGS.peak_tflops)))
    print_summary(*measured[-1])
  results.write_from_flags("mim_jax.benchmarks.train_step", "Train-step throughput",
                           results_table(measured, FLAGS.steps))


if __name__ == "__main__":
  app.run(main)
