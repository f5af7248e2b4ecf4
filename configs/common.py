"""Pieces the method configs share (read with `config_files.sibling(__file__,
"common.py")`): the data and run settings of the published ImageNet recipes and of the
method comparison on the CIFAR-10 subset (the tests shrink any of them:
`config_files.shrink`). Not a config file of its own."""
import os

# The CIFAR-10 subset: $MIM_JAX_CIFAR10, else shared/data/cifar10_small.npz beside the
# repository (<repo>/../shared/data/, found from this file wherever the run starts).
CIFAR10_NPZ = os.environ.get("MIM_JAX_CIFAR10") or os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
    "cifar10_small.npz"))


def imagenet(config, image_size=224):
  """ImageNet-1k from TFDS (`imagenet2012`, train / validation), with the pod setting:
  FSDP in groups of 16 devices, the fastest setting the TPU compiler estimates for MAE
  ViT-B/L and PCAE ViT-L at their published batch on v5e-256 (docs/RESULTS.md, `python -m
  mim_jax.tools.aot --search`); on 16 devices or fewer FSDP spans them all."""
  config.data.update(source="tfds", tfds_name="imagenet2012", train_split="train",
                     eval_split="validation", image_size=image_size)
  config.sharding.update(mode="fsdp", fsdp_size=16)
  return config


def mae_imagenet_run(config, image_size=224):
  """MAE's ImageNet-1k run (PRETRAIN.md), kept by PCAE, Latent MIM and Multi-View MAE:
  batch 4096, 800 epochs with 40 warmup, RandomResizedCrop(0.2–1) + flip."""
  imagenet(config, image_size)
  config.data.crop_scale = (0.2, 1.0)
  config.update(batch_size=4096, num_epochs=800.0, warmup_epochs=40.0)
  return config


def cifar_run(config, image_size=32):
  """The method comparison's run (mim_jax/tools/compare.py) on the CIFAR-10 subset,
  CIFAR10_NPZ ($MIM_JAX_CIFAR10 or <repo>/../shared/data/cifar10_small.npz: 10k train / 2k
  test 32 px images): batch 128, 8 epochs with 10% warmup, crops 0.35–1
  (0.2 of a 32 px image is too little), each method's published lr per image × 8 for a
  few epochs instead of hundreds. Encoders: ViT 192 wide, 6 deep, 3 heads, patch 4 (8×8
  patches), sin-cos positions, no LayerScale, no drop path, the same for every method."""
  config.model.update(width=192, depth=6, num_heads=3, patch_size=4, drop_path_rate=0.0,
                      layer_scale_init=None, pos_embedding="sincos")
  config.data.update(source="npz", path=CIFAR10_NPZ, image_size=image_size,
                     crop_scale=(0.35, 1.0))
  config.batch_size = 128
  config.num_epochs = 8.0
  config.warmup_epochs = 0.8
  config.optimizer.base_lr *= 8
  config.update(log_every_steps=50, checkpoint_every_steps=200, keep_checkpoints=2,
                image_summary_every_steps=0)
  return config
