"""Pieces the method configs share (read with `config_files.sibling(__file__,
"common.py")`): the data and run settings of the published ImageNet recipes, of the
method comparison on the CIFAR-10 subset, and of the tests' tiny runs. Not a config file
of its own."""


def imagenet(config, image_size=224):
  """ImageNet-1k from TFDS (`imagenet2012`, train / validation), with the pod setting:
  FSDP in groups of 16 devices, the fastest setting the TPU compiler estimates for MAE
  ViT-B/L and PCAE ViT-L at their published batch on v5e-256 (docs/RESULTS.md, `python -m
  mim_jax.benchmarks.aot --search`); on 16 devices or fewer FSDP spans them all."""
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
  """The method comparison's run (mim_jax/compare.py) on ../shared/data/cifar10_small.npz
  (10k train / 2k test 32 px images): batch 128, 8 epochs with 10% warmup, crops 0.35–1
  (0.2 of a 32 px image is too little), each method's published lr per image × 8 for a
  few epochs instead of hundreds. Encoders: ViT 192 wide, 6 deep, 3 heads, patch 4 (8×8
  patches), sin-cos positions, no LayerScale, no drop path, the same for every method."""
  config.model.update(width=192, depth=6, num_heads=3, patch_size=4, drop_path_rate=0.0,
                      layer_scale_init=None, pos_embedding="sincos")
  config.data.update(source="npz", path="../shared/data/cifar10_small.npz",
                     image_size=image_size, crop_scale=(0.35, 1.0))
  config.batch_size = 128
  config.num_epochs = 8.0
  config.warmup_epochs = 0.8
  config.optimizer.base_lr *= 8
  config.update(log_every_steps=50, checkpoint_every_steps=200, keep_checkpoints=2,
                image_summary_every_steps=0)
  return config


def tiny_run(config, image_size=16):
  """The tests' run: `image_size` px synthetic images (256 train / 64 eval, 10 classes),
  an encoder 32 wide, 2 deep, 4 heads, patch 4; 4 steps of batch 16 (warmup 1), logs every
  step, checkpoints and image summaries every 2; FSDP shards arrays from 64 elements."""
  config.model.update(width=32, depth=2, num_heads=4, patch_size=4, drop_path_rate=0.0)
  config.data.update(source="synthetic", image_size=image_size, synthetic_train_size=256,
                     synthetic_eval_size=64)
  config.update(batch_size=16, num_train_steps=4, warmup_steps=1, log_every_steps=1,
                checkpoint_every_steps=2, image_summary_every_steps=2, num_summary_images=2)
  config.sharding.fsdp_min_size = 64
  return config


def tiny_cifar_run(config, num_train_steps, batch_size):
  """The tests' learning check: a tiny variant on the 32 px images of
  ../shared/data/cifar10_small.npz, `num_train_steps` steps of `batch_size` (warmup 10),
  the loss logged every 10 steps, no image summary, no checkpoint before the last step."""
  config.data.update(source="npz", path="../shared/data/cifar10_small.npz", image_size=32)
  config.update(num_train_steps=num_train_steps, batch_size=batch_size, warmup_steps=10,
                log_every_steps=10, checkpoint_every_steps=1000, image_summary_every_steps=0)
  return config
