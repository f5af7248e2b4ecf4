"""SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022;
microsoft/SimMIM configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml
over config.py defaults).

python -m mim_jax.main --config=configs/simmim.py:vit_base --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
"""
from mim_jax import config_files, defaults

common = config_files.sibling(__file__, "common.py")


def simmim(size="base", patch_size=16):
  """SimMIM's method (32 px mask cells, 60% hidden, mask token in the encoder, linear
  head, L1) and optimizer: AdamW (0.9, 0.999), wd 0.05, lr 1e-4·batch/512 warmed up from
  5e-7·batch/512 (WARMUP_LR), grad clip 5, multistep ×0.1. optimizer.py
  `get_pretrain_param_groups` skips, besides 1-D params and biases, the ViT's
  no_weight_decay() = {pos_embed, cls_token}: the mask token and the relative position
  bias table are decayed (our sin-cos pos_embed is no parameter)."""
  config = defaults.base_config()
  config.model = defaults.vit_model_config(size, patch_size)
  config.method = dict(name="simmim", mask_patch_size=32, mask_ratio=0.6)
  config.optimizer.update(base_lr=1e-4, lr_scaling="linear_512", schedule="multistep",
                          decay_rate=0.1, b1=0.9, b2=0.999, weight_decay=0.05,
                          grad_clip=5.0, warmup_start_ratio=5e-7 / 1e-4,
                          no_decay_patterns=(r"(^|/)cls_token$",))
  config.data.update(crop_scale=(0.67, 1.0), interpolation="bilinear")  # torchvision's
  return config


def vit_base():
  """SimMIM ViT-B/16 on ImageNet-1k: the published recipe (LayerScale, shared relative
  position bias, batch 2048, 800 epochs, lr ×0.1 at 700)."""
  config = common.imagenet(simmim())
  config.model.update(layer_scale_init=0.1, pos_embedding="shared_rel_bias",
                      drop_path_rate=0.1)
  config.update(batch_size=2048, num_epochs=800.0, warmup_epochs=10.0)
  config.optimizer.decay_epochs = (700,)
  return config


def cifar():
  """SimMIM on the CIFAR-10 subset: the comparison's ViT, 4 px mask cells (one patch),
  lr ×0.1 at 7 of 8 epochs."""
  config = common.cifar_run(simmim())
  # The published 32 px cell is 1/7 of a 224 px side; 4 px is 1/8 of 32. With 8 px cells
  # (2×2 patches) the k-NN stayed at the random encoder's after 4 epochs (docs/RESULTS.md,
  # "SimMIM's mask cell at 32 px").
  config.method.mask_patch_size = 4
  config.optimizer.decay_epochs = (7,)
  return config



VARIANTS = {"vit_base": vit_base, "cifar": cifar}


def get_config(arg="vit_base"):
  return config_files.pick(VARIANTS, arg)
