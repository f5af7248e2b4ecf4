"""MAE ViT-B/16, 800 epochs on ImageNet-1k (He et al. 2022, Appendix A.1).

python -m mim_jax.main --config=configs/mae_vit_base.py --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Variants via the argument: `:large` / `:huge` for ViT-L/16 and ViT-H/14.
"""
from mim_jax import defaults


def get_config(arg="base"):
  config = defaults.base_config()
  config.model = defaults.vit_model_config(arg, patch_size=14 if arg == "huge" else 16)
  config.data.source = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.crop_scale = (0.2, 1.0)
  # pod setting: FSDP in groups of 16 devices, the fastest setting the TPU compiler
  # estimates on v5e-256 at this batch (docs/RESULTS.md; all devices when fewer)
  config.sharding.update(mode="fsdp", fsdp_size=16)
  return config
