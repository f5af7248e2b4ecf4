"""Attentive probe on a pretraining run's frozen tokens, computed once from the
un-augmented train split (mim_jax/evaluation/attentive_probe.py), on the pretraining run's
own dataset unless config.data fields say otherwise.

python -m mim_jax.main --config=configs/eval/attentive_probe.py \
  --config.pretrained=PRETRAIN_DIR --workdir=EVAL_DIR
"""
from mim_jax import config_files, defaults


def published():
  """Attentive probe, CAE tools/run_attentive.py: one learned query over all tokens → BN
  without affine → Linear, SGD Nesterov 0.9, lr 0.4, batch 8192, 90 epochs (10 warmup)."""
  config = defaults.eval_config("attentive_probe")
  config.attentive_probe = dict(epochs=90, batch_size=8192, lr=0.4, warmup_epochs=10.0,
                                min_lr=1e-6, num_heads=config_files.placeholder(int))
  return config


def cifar():
  """Attentive probe for 10k-image sets on a 2-core CPU (the method comparison): CAE's at
  batch 256, lr 0.05, 10 epochs (1 warmup).

  CAE's lr 0.4 belongs to its batch of 8192; at 256 it made the probe fall as MAE trained
  (CIFAR subset, the `compare` study's MAE checkpoints at steps 312 → 1248: top-1 48.2 →
  47.5 at lr 0.4, 50.5 → 52.5 at 0.0125 (0.4 scaled linearly), 52.9 → 56.9 at 0.05;
  docs/RESULTS.md)."""
  config = published()
  config.attentive_probe.update(epochs=10, warmup_epochs=1.0, batch_size=256, lr=0.05)
  return config


VARIANTS = {"published": published, "cifar": cifar}


def get_config(arg="published"):
  return config_files.pick(VARIANTS, arg)
