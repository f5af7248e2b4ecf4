"""Latent MIM on the CIFAR-10 subset (../shared/data/cifar10_small.npz) with a small
encoder (64 wide, 4 deep, 4 heads, patch 4): a few minutes on 2 CPU cores.

python -m mim_jax.main --config=configs/latent_mim_cifar.py --workdir=/tmp/lmim_cifar
The training image is 8·(4 + patch_gap) px (40 at gap 1, 32 at gap 0); the 6 px windows
keep most of a 32 px CIFAR image. Same method fields as configs/latent_mim_vit_base.py.
"""
from mim_jax import defaults
from mim_jax.methods import latent_mim


def get_config():
  config = defaults.base_config()
  config.data.source = "npz"
  config.data.path = "../shared/data/cifar10_small.npz"
  config.data.crop_scale = (0.35, 1.0)
  config.model = defaults.vit_model_config("tiny", patch_size=4)
  config.model.update(width=64, depth=4, num_heads=4, decoder_width=64, decoder_depth=2,
                      decoder_num_heads=4)
  config.method = latent_mim.method_config(patch_gap=1, mask_ratio=0.75,
                                           projector_hidden=256)
  config.data.image_size = 8 * (config.model.get_ref("patch_size") +
                                config.method.get_ref("patch_gap"))
  config.batch_size = 64
  config.num_train_steps = 400
  config.warmup_steps = 40
  config.optimizer.base_lr = 1e-3
  config.optimizer.no_decay_patterns = (r"embed",)  # as configs/latent_mim_vit_base.py
  config.optimizer.update(min_lr_ratio=0.25, warmup_start_ratio=0.25)
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 0
  return config
