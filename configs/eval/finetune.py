"""Fine-tuning a pretrained encoder end to end: MAE's recipe (facebookresearch/mae
FINETUNE.md, main_finetune.py). The encoder (`config.model`) is the pretraining run's,
and so is every `config.data` field left None (as in the other configs/eval/ files); see
mim_jax/evaluation/finetune.py and downstream.py.

python -m mim_jax.main --config=configs/eval/finetune.py:vit_base \
  --config.pretrained=PRETRAIN_DIR --workdir=FINETUNE_DIR --config.num_classes=1000
python -m mim_jax.main --config=configs/eval/finetune.py:cifar \
  --config.pretrained=PRETRAIN_DIR --workdir=FINETUNE_DIR
"""
from mim_jax import config_files, defaults


def finetune(base_lr, layer_decay, drop_path, epochs):
  """MAE's fine-tuning: mean pooling + fc_norm (or the pretraining method's declared
  pooling: `config.pool` None), head init trunc-normal 2e-5, mixup 0.8 / cutmix 1.0 /
  smoothing 0.1, AdamW (0.9, 0.999), wd 0.05 (none on 1-D params and the cls token:
  util/lr_decay.py `param_groups_lrd` with timm ViT's no_weight_decay()), layer-wise lr
  decay, lr·batch/256, batch 1024, warmup 5 epochs, cosine to 1e-6, RandomResizedCrop
  (0.08–1, bicubic) + flip + RandAugment rand-m9-mstd0.5-inc1 + random erasing 0.25
  (pixel, one box); evaluated at Resize 256 + CenterCrop 224, bicubic."""
  config = defaults.streamed_eval_config("finetune")
  config.data.update(crop_scale=(0.08, 1.0), flip=True, interpolation="bicubic",
                     eval_crop_fraction=0.875,  # timm's RandomResizedCrop default; 224/256
                     randaugment="rand-m9-mstd0.5-inc1", random_erasing_prob=0.25,
                     random_erasing_mode="pixel", random_erasing_count=1)
  config.method = dict(name="finetune", head_init_std=2e-5, drop_path_rate=drop_path,
                       mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5,
                       label_smoothing=0.1)
  config.update(batch_size=1024, num_epochs=float(epochs), warmup_epochs=5.0)
  config.optimizer.update(base_lr=base_lr, lr_scaling="linear_256", min_lr=1e-6, b1=0.9,
                          b2=0.999, weight_decay=0.05, layer_decay=layer_decay,
                          no_decay_patterns=(r"(^|/)cls_token$",))
  config.eval_every_steps = 1250  # about one ImageNet epoch at batch 1024; 0: at the end
  return config


def vit_base():
  """Fine-tuning ViT-B: lr 5e-4, layer decay 0.65, drop path 0.1, 100 epochs (FINETUNE.md)."""
  return finetune(5e-4, 0.65, 0.1, 100)


def vit_large():
  """Fine-tuning ViT-L: lr 1e-3, layer decay 0.75, drop path 0.2, 50 epochs."""
  return finetune(1e-3, 0.75, 0.2, 50)


def vit_huge():
  """Fine-tuning ViT-H: lr 1e-3, layer decay 0.75, drop path 0.3, 50 epochs."""
  return finetune(1e-3, 0.75, 0.3, 50)


def simmim_vit_base():
  """Fine-tuning SimMIM ViT-B (microsoft/SimMIM's vit_base__800ep fine-tuning yaml): lr
  1.25e-3·batch/512 (batch 2048), warmup 20 epochs from and cosine to 2e-4 of the peak,
  grad clip 5, layer decay 0.65, drop path 0.1, 100 epochs."""
  config = finetune(1.25e-3, 0.65, 0.1, 100)
  config.update(batch_size=2048, warmup_epochs=20.0)
  config.optimizer.update(lr_scaling="linear_512", min_lr=0.0, min_lr_ratio=2e-4,
                          warmup_start_ratio=2e-4, grad_clip=5.0)  # 2.5e-7 / 1.25e-3
  return config


def cae_vit_base():
  """Fine-tuning CAE ViT-B (scripts/cae_base_finetune.sh): MAE's ViT-B recipe at batch
  4096 (lr 8e-3)."""
  config = vit_base()
  config.batch_size = 4096
  return config


def cifar():
  """Fine-tuning for 10k-image sets on a 2-core CPU (the method comparison,
  mim_jax/tools/compare.py): MAE's ViT-B recipe (lr 5e-4·batch/256, layer decay 0.65,
  drop path 0.1, mixup/cutmix, RandAugment, random erasing, AdamW) at batch 128 for 10
  epochs, 1 of warmup (780 steps on 10k images, about 22 minutes on 2 cores: a comparison
  runs seven), evaluated once at the end; the evaluation crop is the pretraining
  run's (as the probes on that data see it). From step 0 of a comparison (the random
  init) it is training from scratch with the same recipe."""
  config = vit_base()
  config.update(batch_size=128, num_epochs=10.0, warmup_epochs=1.0, eval_every_steps=0)
  config.data.eval_crop_fraction = None
  return config


VARIANTS = {"vit_base": vit_base, "vit_large": vit_large, "vit_huge": vit_huge,
            "simmim_vit_base": simmim_vit_base, "cae_vit_base": cae_vit_base,
            "cifar": cifar}


def get_config(arg="vit_base"):
  return config_files.pick(VARIANTS, arg)
