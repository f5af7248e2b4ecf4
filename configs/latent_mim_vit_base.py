"""Latent MIM ViT-B/16, 800 epochs on ImageNet-1k (Wei, Gupta, Morgado ECCV 2024;
yibingwei-1/LatentMIM `configs/lmim.yaml` and `main_lmim.py`).

python -m mim_jax.main --config=configs/latent_mim_vit_base.py --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Variant via the argument: `:large` for ViT-L/16. Every rung of the paper's ablation ladder
is a `config.method` field (README "Latent MIM"); the training image side follows
`method.patch_gap`: 14·(16 + gap) px (280 at gap 4, 224 at gap 0).
"""
from mim_jax import defaults
from mim_jax.methods import latent_mim


def get_config(arg="base"):
  config = defaults.base_config()
  config.model = defaults.vit_model_config(arg, patch_size=16)
  config.model.update(decoder_width=512, decoder_depth=3, decoder_num_heads=16)
  config.method = latent_mim.method_config()
  config.data.source = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 14 * (config.model.get_ref("patch_size") +
                                 config.method.get_ref("patch_gap"))
  config.data.crop_scale = (0.2, 1.0)
  # no weight decay on biases, norms and embeddings ('bias'/'norm'/'embed' in main_lmim.py)
  config.optimizer.no_decay_patterns = defaults.NO_DECAY_PATTERNS + (r"embed",)
  config.optimizer.min_lr_ratio = 0.25  # cosine to 0.25·lr (min_lr_frac)
  # pod setting: FSDP in groups of 16 devices, the fastest setting the TPU compiler
  # estimates on v5e-256 at this batch (docs/RESULTS.md; all devices when fewer)
  config.sharding.update(mode="fsdp", fsdp_size=16)
  return config
