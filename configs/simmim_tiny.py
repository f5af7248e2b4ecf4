"""SimMIM on the CPU: a 192-wide, 6-deep, 3-head encoder (patch 4) with LayerScale and the
shared relative position bias, 8 px mask cells (60% hidden) on the package's 32 px
synthetic images; 400 steps of batch 64 with the published optimizer and multistep
schedule shape (×0.1 at 7/8 of training).

python -m mim_jax.main --config=configs/simmim_tiny.py --workdir=/tmp/simmim_tiny
"""
from mim_jax import defaults
from mim_jax.methods import simmim


def get_config():
  config = defaults.base_config()
  config.method = simmim.method_config(mask_patch_size=8)
  config.model = defaults.vit_model_config("tiny", patch_size=4)
  config.model.update(depth=6, layer_scale_init=0.1, pos_embedding="shared_rel_bias")
  config.data.source = "synthetic"
  config.data.image_size = 32
  config.data.crop_scale = (0.67, 1.0)
  config.data.interpolation = "bilinear"
  config.batch_size = 64
  config.num_train_steps = 400
  config.warmup_steps = 40
  config.optimizer.update(
      base_lr=2e-3, lr_scaling="linear_512", schedule="multistep", decay_steps=(350,),
      b1=0.9, b2=0.999, weight_decay=0.05, grad_clip=5.0,  # higher lr for a short run
      no_decay_patterns=(r"(^|/)cls_token$",), warmup_start_ratio=5e-7 / 1e-4)
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 200
  config.num_summary_images = 4
  return config
