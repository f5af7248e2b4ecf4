"""PCAE ViT-B/16, 800 epochs on ImageNet-1k (Li et al. ICLR 2023; recipe as
caddyless/PCAE `main_pretrain.py` on top of MAE's).

python -m mim_jax.main --config=configs/pcae_vit_base.py --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Variants via the argument: `:large` / `:huge` for ViT-L/16 and ViT-H/14. Ablations:
--config.method.random_drop=True, --config.method.drop_layers='()' (no dropping),
--config.method.keep_ratio=..., --config.method.drop_layers='(3, 7, 11)' (ViT-B).
"""
from mim_jax import defaults
from mim_jax.methods import pcae


def get_config(arg="base"):
  config = defaults.base_config()
  config.model = defaults.vit_model_config(arg, patch_size=14 if arg == "huge" else 16)
  # drop after blocks depth/3·i (caddyless/PCAE drop_case 0): (0, 4, 8) for ViT-B
  config.method = pcae.method_config(
      drop_layers=tuple(config.model.depth // 3 * i for i in range(3)))
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
