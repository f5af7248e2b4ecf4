"""Linear probe on a pretraining run's frozen cls features, computed once from the
un-augmented train split, on the pretraining run's own dataset unless config.data fields
say otherwise.

python -m mim_jax.main --config=configs/eval/linear_probe.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.linear_probe.batch_size=1024]
"""
from mim_jax import config_files
from mim_jax.evaluation import run


def published():
  """Linear probe, MAE main_linprobe.py: BN without affine → Linear, LARS, lr 0.1·batch/256,
  wd 0, 90 epochs (10 warmup)."""
  config = run.base_config("linear_probe")
  config.linear_probe = dict(epochs=90, batch_size=256, base_lr=0.1, warmup_epochs=10.0,
                             weight_decay=0.0)
  return config


def cifar():
  """Linear probe for 10k-image sets (the method comparison): MAE's, at its published peak
  lr 6.4 (0.1·16384/256) with batch 256."""
  # LARS moves a weight matrix by about lr·0.001/(1 − 0.9) of its norm per step: at lr
  # 0.1·256/256 the probe is far from converged after 90 epochs of 10k images.
  config = published()
  config.linear_probe.base_lr = 6.4
  return config


VARIANTS = {"published": published, "cifar": cifar}


def get_config(arg="published"):
  return config_files.pick(VARIANTS, arg)
