"""Linear probe on a pretraining run's frozen cls features, computed once from the
un-augmented train split, on the pretraining run's own dataset unless config.data fields
say otherwise.

python -m mim_jax.main --config=configs/eval/linear_probe.py --config.pretrained=PRETRAIN_DIR \
  --workdir=EVAL_DIR [--config.pool=mean] [--config.linear_probe.batch_size=1024]
"""
from mim_jax.evaluation import run


def get_config():
  """Linear probe, MAE main_linprobe.py: BN without affine → Linear, LARS, lr 0.1·batch/256,
  wd 0, 90 epochs (10 warmup)."""
  config = run.base_config("linear_probe")
  config.linear_probe = dict(epochs=90, batch_size=256, base_lr=0.1, warmup_epochs=10.0,
                             weight_decay=0.0)
  return config
