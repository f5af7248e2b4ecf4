"""PCAE on the CIFAR-10 subset (../shared/data/cifar10_small.npz) with a small encoder
(64 wide, 4 deep, 4 heads, patch 4; decoder 64 wide, 2 deep): a few minutes on 2 CPU
cores. The teacher drops tokens after blocks 0, 1 and 2: 48 hidden → 24 → 12 → 6.

python -m mim_jax.main --config=configs/pcae_cifar.py --workdir=/tmp/pcae_cifar
"""
from mim_jax import defaults
from mim_jax.methods import pcae


def get_config():
  config = defaults.base_config()
  config.data.source = "npz"
  config.data.path = "../shared/data/cifar10_small.npz"
  config.data.image_size = 32
  config.data.crop_scale = (0.35, 1.0)
  config.model = defaults.vit_model_config("tiny", patch_size=4)
  config.model.update(width=64, depth=4, num_heads=4, decoder_width=64, decoder_depth=2,
                      decoder_num_heads=4)
  # 0.99 rather than 0.9999: over 400 steps the 0.9999 teacher would barely leave its init
  config.method = pcae.method_config(drop_layers=(0, 1, 2), target_momentum=0.99)
  config.batch_size = 64
  config.num_train_steps = 400
  config.warmup_steps = 40
  config.optimizer.base_lr = 1e-3
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 0
  return config
