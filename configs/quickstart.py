"""Quickstart: MAE with a ViT-Tiny-sized encoder (192 wide, 12 deep, 3 heads, patch 4) on
the package's procedurally generated, labelled 32 px image set. No data to download;
a few minutes on 2 CPU cores.

python -m mim_jax.main --config=configs/quickstart.py --workdir=/tmp/mim_quickstart
"""
from mim_jax import defaults


def get_config():
  config = defaults.base_config()
  config.data.source = "synthetic"
  config.data.image_size = 32
  config.data.crop_scale = (0.35, 1.0)
  config.model = defaults.vit_model_config("tiny", patch_size=4)
  config.model.decoder_width = 128
  config.model.decoder_depth = 2
  config.model.decoder_num_heads = 4
  config.batch_size = 64
  config.num_train_steps = 400
  config.warmup_steps = 40
  config.optimizer.base_lr = 1.5e-4 * 4  # higher lr for a short run
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 200
  config.num_summary_images = 4
  return config
