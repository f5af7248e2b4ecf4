"""Multi-View MAE on the CIFAR-10 subset (../shared/data/cifar10_small.npz) with a small
encoder (64 wide, 4 deep, 4 heads, patch 4) and a 2-block decoder: a few minutes on
2 CPU cores. Same method fields as configs/multiview_mae_vit_base.py.

python -m mim_jax.main --config=configs/multiview_mae_cifar.py --workdir=/tmp/mvmae_cifar
"""
from mim_jax import defaults
from mim_jax.methods import multiview_mae


def get_config():
  config = defaults.base_config()
  config.data.source = "npz"
  config.data.path = "../shared/data/cifar10_small.npz"
  config.data.image_size = 32
  config.data.crop_scale = (0.35, 1.0)
  config.model = defaults.vit_model_config("tiny", patch_size=4)
  config.model.update(width=64, depth=4, num_heads=4, decoder_width=64, decoder_depth=2,
                      decoder_num_heads=4)
  config.method = multiview_mae.method_config(proj_hidden_dim=256, proj_dim=64)
  config.batch_size = 64
  config.num_train_steps = 400
  config.warmup_steps = 40
  config.optimizer.base_lr = 1e-3 * 256 / 64  # peak lr 1e-3 at batch 64
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 200
  config.num_summary_images = 4
  return config
