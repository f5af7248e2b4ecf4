"""PCAE train-step time with token dropping, without it, and MAE's, on the same model.

python -m mim_jax.benchmarks.pcae_step_time --config=configs/pcae.py:vit_base \
    --config.batch_size=8 [--steps=5]

Takes the flags of mim_jax.benchmarks.train_step. Times `--config` as given (the teacher
drops tokens after `method.drop_layers`), the same config with `drop_layers=()` (the teacher
and decoder see every hidden patch: MAE with latent targets), and MAE with the same encoder
and decoder (pixel targets), and prints each median step time and its ratio to the
no-drop step.
"""
import jax
from absl import app

from mim_jax.benchmarks.compiled_step import measure_train_step, vit_base_config
from mim_jax.benchmarks.train_step import FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  no_drop = config.copy_and_resolve_references()
  no_drop.method.drop_layers = ()
  mae = config.copy_and_resolve_references()
  mae.method = vit_base_config("mae").method  # MAE's method fields, pixel targets
  mae.method.mask_ratio = config.method.mask_ratio
  print(f"model: width={config.model.width} depth={config.model.depth} "
        f"patch={config.model.patch_size} image={config.data.image_size} "
        f"decoder={config.model.decoder_width}x{config.model.decoder_depth} "
        f"batch={config.batch_size} dtype={config.model.dtype} "
        f"devices={jax.device_count()} ({jax.devices()[0].platform}), "
        f"median of {FLAGS.steps} steps")
  rows = [(f"pcae drop_layers={tuple(config.method.drop_layers)} "
           f"keep_ratio={config.method.keep_ratio}", config),
          ("pcae drop_layers=() (no token dropping)", no_drop),
          ("mae (pixel targets)", mae)]
  results = [(name, measure_train_step(c, FLAGS.steps)) for name, c in rows]
  base = results[1][1]["step_s"]
  for name, r in results:
    print(f"{name}: step_s={r['step_s']:.3f} ({r['step_s'] / base:.2f}x no-drop), "
          f"gflops_per_image={r['flops'] / config.batch_size / 1e9:.3g}, "
          f"compile_s={r['compile_s']:.1f}")


if __name__ == "__main__":
  app.run(main)
