"""Weighted k-NN (k=20, T=0.07, cosine) and 1-NN on a pretraining run's frozen features (the
pretraining method's declared pooling and block unless --config.pool / --config.block),
on the pretraining run's own dataset (train split as the memory bank, eval split as
queries) unless config.data fields say otherwise.

python -m mim_jax.main --config=configs/eval/knn.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.block=8]
"""
from mim_jax import config_files, defaults


def train_bank():
  """k-NN: cosine similarity, k = 20, T = 0.07 (solo-learn / mmselfsup), and 1-NN."""
  config = defaults.eval_config("knn")
  config.knn = dict(k=20, temperature=0.07, chunk_size=1024, leave_one_out=False)
  return config


def leave_one_out():
  """Latent MIM's NN (util/misc.py eval_knn): each eval image's label from its nearest
  other eval image (nn1_top1), no train split."""
  config = train_bank()
  config.knn.leave_one_out = True
  return config


VARIANTS = {"train_bank": train_bank, "leave_one_out": leave_one_out}


def get_config(arg="train_bank"):
  return config_files.pick(VARIANTS, arg)
