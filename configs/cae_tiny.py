"""CAE on the CPU: a 192-wide, 6-deep, 3-head encoder (patch 4) with LayerScale, a
2-block regressor and 2-block decoder at the same width, block-wise masking of 32 of the
64 patches of the package's 32 px synthetic images; 400 steps of batch 64, pixel targets.

python -m mim_jax.main --config=configs/cae_tiny.py --workdir=/tmp/cae_tiny
"""
from mim_jax import defaults
from mim_jax.methods import cae


def get_config():
  config = defaults.base_config()
  config.method = cae.method_config()
  config.model = cae.model_config("tiny", patch_size=4)
  config.model.update(depth=6, drop_path_rate=0.0, regressor_depth=2, decoder_depth=2)
  config.data.source = "synthetic"
  config.data.image_size = 32
  config.data.crop_scale = (0.35, 1.0)
  config.batch_size = 64
  config.num_train_steps = 400
  config.warmup_steps = 40
  config.optimizer.update(
      base_lr=1e-3, lr_scaling="absolute", min_lr=1e-5, b1=0.9, b2=0.999,
      weight_decay=0.05, grad_clip=3.0)
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 200
  config.num_summary_images = 4
  return config
