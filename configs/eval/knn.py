"""Weighted k-NN (k=20, T=0.07, cosine) and 1-NN on a pretraining run's frozen cls
features, on the pretraining run's own dataset (train split as the memory bank, eval
split as queries) unless config.data fields say otherwise.

python -m mim_jax.main --config=configs/eval/knn.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.block=8]
"""
from mim_jax.evaluation import run


def get_config():
  return run.base_config("knn")
