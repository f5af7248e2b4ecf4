"""CAE ViT-B/16 on ImageNet-1k: the published recipe (Chen et al. 2023; Atten4Vis/CAE
scripts/cae_base_800e.sh over tools/run_pretraining.py defaults), pixel targets.

python -m mim_jax.main --config=configs/cae_vit_base.py --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
The argument picks the schedule: `:300`, `:800` (default) or `:1600` epochs with 10, 20,
40 warmup epochs; `:large` is ViT-L/16 as scripts/cae_large_1600e.sh trains it (1600
epochs, warmup 40, LayerScale 1e-5 in the encoder, regressor and decoder, which are 1024
wide with 16 heads; batch 2048, lr 1.5e-3). Tokenizer targets (the paper's DALL-E
dVAE ids):
    --config.method.target=tokenizer --config.method.tokenizer=my_pkg.dalle:tokenize
"""
from mim_jax import defaults
from mim_jax.methods import cae

WARMUP_EPOCHS = {300: 10.0, 800: 20.0, 1600: 40.0}


def get_config(arg="800"):
  if arg != "large" and (not arg.isdigit() or int(arg) not in WARMUP_EPOCHS):
    raise ValueError(f"configs/cae_vit_base.py:{arg}: choose one of "
                     f"{sorted(WARMUP_EPOCHS)} (epochs) or 'large'.")
  epochs = 1600 if arg == "large" else int(arg)
  config = defaults.base_config()
  config.method = cae.method_config()
  config.model = cae.model_config("large" if arg == "large" else "base", patch_size=16)
  if arg == "large":
    config.model.update(layer_scale_init=1e-5, decoder_layer_scale_init=1e-5)
  config.data.source = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.crop_scale = (0.08, 1.0)
  config.data.interpolation = "bicubic"
  config.batch_size = 2048
  config.num_epochs = float(epochs)
  config.warmup_epochs = WARMUP_EPOCHS[epochs]
  config.optimizer.update(
      base_lr=1.5e-3, lr_scaling="absolute", min_lr=1e-5, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.05, grad_clip=3.0, no_decay_patterns=cae.NO_DECAY_PATTERNS)
  # pod setting: FSDP in groups of 16 devices, the fastest setting the TPU compiler
  # estimates on v5e-256 at this batch (docs/RESULTS.md; all devices when fewer)
  config.sharding.update(mode="fsdp", fsdp_size=16)
  return config
