"""Quickstart: MAE with a ViT-Tiny-sized encoder on the package's procedurally generated,
labelled 32 px image set (no data to download): a few minutes on 2 CPU cores.

python -m mim_jax.main --config=configs/quickstart.py --workdir=/tmp/mim_quickstart
"""
from mim_jax import config_files

mae = config_files.sibling(__file__, "mae.py")


def get_config():
  """MAE, ViT-Tiny-sized (192 wide, 12 deep, 3 heads, patch 4), decoder 128×2, 32 px
  synthetic images, 400 steps of batch 64: under 3 minutes on 2 CPU cores."""
  config = mae.mae("tiny", patch_size=4)
  config.model.update(decoder_width=128, decoder_depth=2, decoder_num_heads=4)
  config.data.update(source="synthetic", image_size=32, crop_scale=(0.35, 1.0))
  config.update(batch_size=64, num_train_steps=400, warmup_steps=40, log_every_steps=50,
                checkpoint_every_steps=200, keep_checkpoints=2, image_summary_every_steps=200,
                num_summary_images=4)
  config.optimizer.base_lr = 1.5e-4 * 4  # higher lr for a short run
  return config
