"""Train-step throughput of the pretraining (and evaluation) configs on the local devices.

python -m mim_jax.tools.train_step [--methods=mae,simmim,...] \
    [--evals=linear_probe,finetune] [--batch_size=8] [--steps=10] \
    [--peak_tflops=... | --measure_peak] [--dtype=float32|bfloat16] \
    [--remat=none|full|...] [--scan_layers] [--attention_impl=xla|cudnn] \
    [--mae_repo=PATH [--timm_path=DIR] [--rounds=5]] [--results=docs/RESULTS.md]
python -m mim_jax.tools.train_step --config=configs/mae.py:vit_base [--config.x=...]

For each method's ViT-B/16 config (configs/<method>.py:vit_base, at its own image size:
224 px, 280 px for Latent MIM's grid with gaps), or for `--config` alone, prints compile
time, the median step time over `--steps` timed steps (after one warm-up step), images/s,
FLOPs per image and, against a peak, the MFU. `--evals` adds the steps of streamed
evaluation protocols (the published linear probe: the frozen encoder's forward and a
BN + Linear head; fine-tuning: the whole ViT's forward and backward with mixup/cutmix),
their ViT-B recipes (compiled_step.EVAL_CONFIGS) on the encoder of `--config` or else of
configs/mae.py:vit_base, at `--batch_size`, with 1000 classes as on ImageNet-1k
(compiled_step.evaluation_config). The peak is `--peak_tflops` (of all local devices
together) or, with --measure_peak, the host's own: the best rate of XLA's fp32
square matmuls (compiled_step.MATMUL_SIZES), so that on a CPU the MFU says how close the
step comes to the matmul speed this host can reach.

With --mae_repo (a facebookresearch/mae checkout; mim_jax/tools/torch_mae_step.py),
MAE's step is timed in `--rounds` rounds interleaved with the official PyTorch step at the
same batch and fp32, and torch's matmul rate on the same sizes is printed beside XLA's:
the ratio of images/s, and each step's MFU against its own framework's matmul peak.

With --results, the same figures replace the 'train_step' section (--results_section) of
that document, with the command, machine and date (mim_jax/tools/results_doc.py).

FLOPs (`step`, `model`: with and without remat) as mim_jax/tools/compiled_step.py
counts them; MFU = model FLOPs · images/s / peak (the official MAE step does the same work
as ours: our MAE count). (3 × the forward loss would overcount methods with a
stop-gradient target encoder: Latent MIM, PCAE, CAE.) Random images, no input pipeline
(see input_pipeline.py). The host's malloc follows --host_memory (mim_jax/host.py).
"""
from typing import Any, Dict, List

import numpy as np
from absl import app, flags

from mim_jax import host, methods
from mim_jax.tools import results_doc, step_flags, torch_mae_step
from mim_jax.tools.compiled_step import (CompiledStep, evaluation_config, matmul_tflops,
                                         results_table)
from mim_jax.tools.step_flags import apply_overrides, describe, method_config

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  step_flags.define_config_flags("One experiment config file (overrides --methods).")
  flags.DEFINE_list("methods", list(methods.METHODS),
                    "Methods whose configs/<method>.py:vit_base to time.")
  flags.DEFINE_list("evals", [], "Streamed evaluations to time on the pretraining encoder "
                    "(--config's, else configs/mae.py:vit_base's): names of "
                    "compiled_step.EVAL_CONFIGS (linear_probe, finetune: the ViT-B recipes) or "
                    "configs/eval/ specs.")
  flags.DEFINE_integer("batch_size", 8, "Global batch of the --methods and --evals configs.")
  flags.DEFINE_integer("steps", 10, "Timed steps.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of all local devices together, for "
                     "MFU (e.g. 989 for one H100 SXM in bf16).")
  flags.DEFINE_bool("measure_peak", False, "MFU against the host's measured fp32 matmul peak "
                    "(overrides --peak_tflops).")
  torch_mae_step.define_flags()
  flags.DEFINE_integer("rounds", 5, "Alternating rounds of ours and the official step.")
  results_doc.define_flags("train_step")


def print_summary(config, result: Dict[str, Any]) -> None:
  print(describe(config))
  line = (f"  compile_s={result['compile_s']:.1f} step_s_median={result['step_s']:.4f} "
          f"images_per_s={result['images_per_s']:.2f} "
          f"model_gflops_per_image={result['model_gflops_per_image']:.2f} (XLA, no remat) "
          f"step_gflops_per_image={result['step_gflops_per_image']:.2f} (XLA step)")
  if "mfu" in result:
    line += f" mfu={result['mfu']:.3f}"
  print(line + f" final_loss={result['final_loss']:.4f}", flush=True)


def rates_line(framework: str, rates: Dict[int, float]) -> str:
  sizes = ", ".join(f"{n}³ {r:.3f}" for n, r in rates.items())
  return f"{framework} fp32 matmul: {sizes} TFLOP/s; peak {max(rates.values()):.3f}"


def compare_official(ours: CompiledStep, peak_tflops: float) -> List[str]:
  """Ours (`ours`: MAE ViT-B/16's step) and the official step, interleaved; lines for the
  results document."""
  models_mae = torch_mae_step.import_official_mae(FLAGS.mae_repo, FLAGS.timm_path)
  official = torch_mae_step.official_step(models_mae, ours.config.batch_size)
  official()  # warm-up
  torch_rates = torch_mae_step.torch_matmul_tflops()
  torch_peak = max(torch_rates.values())
  torch_line = rates_line("torch", torch_rates)
  print(f"official: facebookresearch/mae mae_vit_base_patch16 fp32 "
        f"{torch_mae_step.describe_torch()}\n{torch_line}", flush=True)
  official_s = float(np.median(torch_mae_step.interleave(ours, official, FLAGS.rounds,
                                                         FLAGS.steps)))
  ours_s = float(np.median(ours.times))
  batch = ours.config.batch_size
  flops = ours.model_flops  # the same model and step
  lines = [f"MAE ViT-B/16 fp32 batch {batch}, {FLAGS.rounds} interleaved rounds of "
           f"{FLAGS.steps} steps each ({torch_mae_step.describe_torch()}; "
           f"facebookresearch/mae `models_mae.py`):", "",
           "| step | s/step | images/s | MFU of its framework's matmul peak |",
           "| --- | --- | --- | --- |",
           f"| ours (JAX) | {ours_s:.3f} | {batch / ours_s:.2f} | "
           f"{flops / ours_s / (peak_tflops * 1e12):.1%} of {peak_tflops:.3f} |",
           f"| official (PyTorch) | {official_s:.3f} | {batch / official_s:.2f} | "
           f"{flops / official_s / (torch_peak * 1e12):.1%} of {torch_peak:.3f} |", "",
           f"ours/official images/s: **{official_s / ours_s:.2f}×**. {torch_line}."]
  print("\n".join(lines[2:]), flush=True)
  return lines


def main(argv):
  del argv
  host.configure_from_flags()  # before JAX starts its threads
  results_doc.requested_section()  # a bad --results_section fails first
  peak = FLAGS.peak_tflops
  notes = []
  if FLAGS.measure_peak:
    rates = matmul_tflops()
    peak = max(rates.values())
    notes.append(rates_line("XLA", rates) + " (the MFU column's peak).")
    print(notes[-1], flush=True)
  if FLAGS.config is not None:
    configs = [FLAGS.config]
    apply_overrides(FLAGS.config)
  else:
    configs = [method_config(name, FLAGS.batch_size) for name in FLAGS.methods]
  if FLAGS.evals:
    pretrain = (FLAGS.config if FLAGS.config is not None else
                method_config("mae", FLAGS.batch_size))
    for name in FLAGS.evals:
      configs.append(evaluation_config(name, pretrain))
      configs[-1].batch_size = FLAGS.batch_size
  measured = []
  for config in configs:
    step = CompiledStep(config)
    step.run(FLAGS.steps)
    measured.append((config, step.summary(peak)))
    print_summary(*measured[-1])
    del step  # one step's state in memory at a time
  if FLAGS.mae_repo:
    # configs/mae.py:vit_base, the official model's size
    notes += [""] + compare_official(CompiledStep(method_config("mae", FLAGS.batch_size)),
                                     peak)
  label = "MFU of the XLA matmul peak" if FLAGS.measure_peak else "MFU"
  title = "Train-step throughput" + (": pretraining and evaluation" if FLAGS.evals else "")
  results_doc.write_from_flags("mim_jax.tools.train_step", title,
                               results_table(measured, FLAGS.steps, label) + "\n" +
                               "\n".join(notes) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
