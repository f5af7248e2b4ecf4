"""Linear probe (MAE main_linprobe.py recipe: BN without affine -> Linear, LARS, base lr
0.1 × batch/256, 90 epochs, 10 warmup) on a pretraining run's frozen cls features,
computed once from the un-augmented train split, on the pretraining run's own dataset
unless config.data fields say otherwise.

python -m mim_jax.main --config=configs/eval/linear_probe.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.linear_probe.batch_size=1024]
"""
from mim_jax.evaluation import run


def get_config():
  return run.base_config("linear_probe")
