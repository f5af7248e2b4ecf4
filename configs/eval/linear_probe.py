"""Linear probe on a pretraining run's frozen encoder, on the pretraining run's own dataset
unless config.data fields say otherwise (mim_jax/evaluation/linear_probe.py).

python -m mim_jax.main --config=configs/eval/linear_probe.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.grad_accum_steps=4]
python -m mim_jax.main --config=configs/eval/linear_probe.py:cifar \
  --config.pretrained=PRETRAIN_DIR --workdir=EVAL_DIR
"""
from mim_jax import config_files, defaults


def published():
  """Linear probe, MAE main_linprobe.py: a freshly augmented batch (RandomResizedCrop 0.08–1
  + flip) through the frozen encoder every step, BN without affine → Linear, LARS, lr
  0.1·batch/256, wd 0, batch 16384, 90 epochs (10 warmup); Resize 256 + CenterCrop 224."""
  config = defaults.streamed_eval_config("linear_probe")
  config.block = config_files.placeholder(int)  # None: the method's (the last block)
  config.data.update(crop_scale=(0.08, 1.0), flip=True, interpolation="bicubic",
                     eval_crop_fraction=0.875)  # RandomResizedCrop(224, bicubic); 224/256
  config.method = dict(name="linear_probe", bn_eps=1e-6, bn_momentum=0.1)
  config.update(batch_size=16384, num_epochs=90.0, warmup_epochs=10.0)
  config.optimizer.update(name="lars", base_lr=0.1, lr_scaling="linear_256", momentum=0.9,
                          weight_decay=0.0, min_lr=0.0)
  return config


def cifar():
  """Linear probe for 10k-image sets (the method comparison): features computed once from
  un-augmented images, MAE's probe at its published peak lr 6.4 (0.1·16384/256) with
  batch 256, 90 epochs (10 warmup)."""
  # LARS moves a weight matrix by about lr·0.001/(1 − 0.9) of its norm per step: at lr
  # 0.1·256/256 the probe is far from converged after 90 epochs of 10k images.
  config = defaults.eval_config("linear_probe")
  config.linear_probe = dict(epochs=90, batch_size=256, base_lr=6.4, warmup_epochs=10.0,
                             weight_decay=0.0)
  return config


VARIANTS = {"published": published, "cifar": cifar}


def get_config(arg="published"):
  return config_files.pick(VARIANTS, arg)
