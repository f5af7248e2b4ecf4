"""Multi-View MAE ViT-B/16, 800 epochs on ImageNet-1k (Ji, Han, Rhee, Applied Sciences
2023; ../shared/docs/METHODS.md §6).

The paper's best ablation settings (§4.3): 80% of each view hidden, λ = 2.0, decoder
depth 8 (MAE's; 4 and 8 tie), two different targets; NT-Xent τ = 0.1 (SimCLR). The
notes give no other pre-training hyper-parameters, so the rest is MAE's recipe: batch
4096, lr 1.5e-4·batch/256, AdamW (0.9, 0.95), wd 0.05, warmup 40 epochs,
RandomResizedCrop(224, 0.2–1) + flip for each view. The 84.3 fine-tune result is after
1600 epochs: --config.num_epochs=1600.

python -m mim_jax.main --config=configs/multiview_mae_vit_base.py --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Ablations: --config.method.mask_ratio=0.5 ... 0.95, --config.method.contrastive_weight=0.1
... 2.0, --config.model.decoder_depth=1 ... 12, --config.method.contrastive=False,
--config.method.two_targets=False; readings: --config.method.cross_head=shared,
--config.method.pool=cls, --config.method.temperature=0.2.
"""
from mim_jax import defaults
from mim_jax.methods import multiview_mae


def get_config():
  config = defaults.base_config()
  config.model = defaults.vit_model_config("base", patch_size=16)
  config.method = multiview_mae.method_config()
  config.data.source = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.crop_scale = (0.2, 1.0)
  # pod setting: FSDP in groups of 16 devices, the fastest setting the TPU compiler
  # estimates on v5e-256 at this batch (docs/RESULTS.md; all devices when fewer)
  config.sharding.update(mode="fsdp", fsdp_size=16)
  return config
