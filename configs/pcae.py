"""PCAE (Li et al., "Progressively Compressed Auto-Encoder for Self-Supervised
Representation Learning", ICLR 2023; read against the reproduction caddyless/PCAE
`main_pretrain.py` on top of MAE's).

python -m mim_jax.main --config=configs/pcae.py:vit_base --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Ablations: --config.method.random_drop=True, --config.method.drop_layers='()' (no
dropping), --config.method.keep_ratio=..., --config.method.drop_layers='(3, 7, 11)'.
"""
from mim_jax import config_files, defaults

common = config_files.sibling(__file__, "common.py")


def pcae(size="base", patch_size=16):
  """PCAE's method (MAE masking of 75%, EMA teacher 0.9999 → 1 dropping half of its
  tokens after blocks depth/3·i, caddyless/PCAE drop_case 0: (0, 4, 8) for ViT-B), an MAE
  decoder (512×8, 16 heads) and MAE's optimizer (the reproduction's main_pretrain.py)."""
  config = defaults.base_config()
  config.model = defaults.vit_model_config(size, patch_size)
  config.model.update(decoder_width=512, decoder_depth=8, decoder_num_heads=16)
  depth = config.model.depth
  config.method = dict(name="pcae", mask_ratio=0.75,
                       drop_layers=tuple(depth // 3 * i for i in range(3)), keep_ratio=0.5,
                       random_drop=False, target_momentum=0.9999)
  config.optimizer.update(base_lr=1.5e-4, lr_scaling="linear_256", b1=0.9, b2=0.95,
                          weight_decay=0.05)
  return config


def published(size, patch_size=16):
  """MAE's ImageNet-1k recipe: batch 4096, 800 epochs (40 warmup), crops 0.2–1; FSDP
  in groups of 16 devices (common.imagenet)."""
  return common.mae_imagenet_run(pcae(size, patch_size))


def vit_base():
  """PCAE ViT-B/16 on ImageNet-1k: MAE's recipe, teacher drops after blocks 0, 4, 8."""
  return published("base")


def vit_large():
  """PCAE ViT-L/16 on ImageNet-1k: MAE's recipe, drops after blocks 0, 8, 16, FSDP."""
  return published("large")


def vit_huge():
  """PCAE ViT-H/14 on ImageNet-1k: MAE's recipe, drops after blocks 0, 10, 20, FSDP."""
  return published("huge", patch_size=14)


def cifar():
  """PCAE on the CIFAR-10 subset: the comparison's ViT, drops after blocks 0, 2, 4
  (48 hidden → 24 → 12 → 6), teacher 0.99 → 1, decoder 128×2."""
  config = common.cifar_run(pcae())
  config.model.update(decoder_width=128, decoder_depth=2, decoder_num_heads=4)
  # 0.9999 over ~250k published steps reaches ~4% of training; 0.99 is ~15% of ~600 steps
  config.method.update(drop_layers=(0, 2, 4), target_momentum=0.99)
  return config


VARIANTS = {"vit_base": vit_base, "vit_large": vit_large, "vit_huge": vit_huge,
            "cifar": cifar}


def get_config(arg="vit_base"):
  return config_files.pick(VARIANTS, arg)
