"""Fine-tuning a pretrained encoder end to end: MAE's recipe (facebookresearch/mae
FINETUNE.md, main_finetune.py); `:large`, `:huge` for the ViT-L/H recipes. The encoder
(`config.model`) is the pretraining run's, and so is every `config.data` field left None
(as in the other configs/eval/ files); see mim_jax/evaluation/finetune.py.

python -m mim_jax.main --config=configs/eval/finetune.py --config.pretrained=PRETRAIN_DIR \
  --workdir=FINETUNE_DIR --config.num_classes=1000
"""
import ml_collections

from mim_jax import defaults
from mim_jax.evaluation import run

# (base lr, layer decay, drop path, epochs) of FINETUNE.md; warmup 5 epochs for all.
RECIPES = {"base": (5e-4, 0.65, 0.1, 100), "large": (1e-3, 0.75, 0.2, 50),
           "huge": (1e-3, 0.75, 0.3, 50)}


def get_config(arg: str = "base"):
  if arg not in RECIPES:
    raise ValueError(f"Unknown fine-tuning recipe {arg!r}; choose one of {sorted(RECIPES)}.")
  base_lr, layer_decay, drop_path, epochs = RECIPES[arg]
  config = defaults.base_config()
  del config["model"]  # the pretraining run's, filled in at run time
  del config["seed"]  # the pretraining run's (the same synthetic set)
  config.protocol = "finetune"
  config.pretrained = ml_collections.config_dict.placeholder(str)  # pretraining workdir
  config.pretrained_step = ml_collections.config_dict.placeholder(int)  # None: the newest
  config.use_target = False  # the EMA target encoder (Latent MIM) instead of the online one
  config.num_classes = ml_collections.config_dict.placeholder(int)  # None: synthetic's
  config.data = run.data_overrides()  # None: as in the pretraining run
  config.data.crop_scale = (0.08, 1.0)  # timm's RandomResizedCrop default
  config.method = ml_collections.ConfigDict(dict(
      name="finetune", pool="mean", head_init_std=2e-5, drop_path_rate=drop_path,
      mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5,
      label_smoothing=0.1))
  config.batch_size = 1024
  config.num_epochs = float(epochs)
  config.warmup_epochs = 5.0
  config.optimizer.update(base_lr=base_lr, lr_scaling="linear_256", min_lr=1e-6, b1=0.9,
                          b2=0.999, weight_decay=0.05, layer_decay=layer_decay,
                          # util/lr_decay.py `param_groups_lrd`: 1-D params and timm ViT's
                          # no_weight_decay() = {pos_embed, cls_token, dist_token}
                          no_decay_patterns=(r"(^|/)cls_token$",))
  config.eval_every_steps = 1250  # about one ImageNet epoch at batch 1024; 0: at the end
  config.eval_batch_size = 1024
  config.image_summary_every_steps = 0
  return config
