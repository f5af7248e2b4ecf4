"""Weighted k-NN (k=20, T=0.07, cosine) and 1-NN on a pretraining run's frozen cls
features, on the pretraining run's own dataset (train split as the memory bank, eval
split as queries) unless config.data fields say otherwise.

python -m mim_jax.main --config=configs/eval/knn.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.block=8]
"""
from mim_jax.evaluation import run


def get_config():
  """k-NN: cosine similarity, k = 20, T = 0.07 (solo-learn / mmselfsup), and 1-NN."""
  config = run.base_config("knn")
  config.knn = dict(k=20, temperature=0.07, chunk_size=1024)
  return config
