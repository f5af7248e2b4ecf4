"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022;
facebookresearch/mae `models_mae.py`, `main_pretrain.py`, PRETRAIN.md).

python -m mim_jax.main --config=configs/mae.py:vit_base --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
"""
from mim_jax import config_files, defaults

common = config_files.sibling(__file__, "common.py")


def mae(size="base", patch_size=16):
  """MAE's method (75% random masking, per-patch normalised pixel targets), its decoder
  (512 wide, 8 deep, 16 heads) and optimizer: AdamW (0.9, 0.95), wd 0.05,
  lr 1.5e-4·batch/256, warmup then cosine to 0."""
  config = defaults.base_config()
  config.model = defaults.vit_model_config(size, patch_size)
  config.model.update(decoder_width=512, decoder_depth=8, decoder_num_heads=16)
  config.method = dict(name="mae", mask_ratio=0.75, norm_pix_loss=True)
  config.optimizer.update(base_lr=1.5e-4, lr_scaling="linear_256", b1=0.9, b2=0.95,
                          weight_decay=0.05)
  return config


def published(size, patch_size=16):
  """The ImageNet-1k recipe: batch 4096, 800 epochs with 40 warmup,
  RandomResizedCrop(224, 0.2–1, bicubic) + flip; FSDP in groups of 16 devices
  (common.imagenet)."""
  return common.mae_imagenet_run(mae(size, patch_size))


def vit_base():
  """MAE ViT-B/16 on ImageNet-1k: the published recipe (batch 4096, 800 epochs)."""
  return published("base")


def vit_large():
  """MAE ViT-L/16 on ImageNet-1k: the published recipe, FSDP."""
  return published("large")


def vit_huge():
  """MAE ViT-H/14 on ImageNet-1k: the published recipe, FSDP."""
  return published("huge", patch_size=14)


def cifar():
  """MAE on the CIFAR-10 subset: the comparison's ViT (192×6, patch 4), decoder 128×2,
  batch 128, 8 epochs."""
  config = common.cifar_run(mae())
  config.model.update(decoder_width=128, decoder_depth=2, decoder_num_heads=4)
  return config



VARIANTS = {"vit_base": vit_base, "vit_large": vit_large, "vit_huge": vit_huge,
            "cifar": cifar}


def get_config(arg="vit_base"):
  return config_files.pick(VARIANTS, arg)
