"""Attentive probe (CAE tools/run_attentive.py recipe: one learned query cross-attending
to all tokens -> BN without affine -> Linear, SGD Nesterov 0.9, lr 0.4, 90 epochs, 10
warmup) on a pretraining run's frozen tokens, computed once from the un-augmented train
split, on the pretraining run's own dataset unless config.data fields say otherwise.

python -m mim_jax.main --config=configs/eval/attentive_probe.py \
  --config.pretrained=PRETRAIN_DIR --workdir=EVAL_DIR
"""
from mim_jax.evaluation import run


def get_config():
  return run.base_config("attentive_probe")
