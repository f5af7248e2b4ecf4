"""SimMIM ViT-B/16, 800 epochs on ImageNet-1k: the published recipe (Xie et al. 2022;
microsoft/SimMIM configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml
over config.py defaults).

python -m mim_jax.main --config=configs/simmim_vit_base.py --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
"""
from mim_jax import defaults
from mim_jax.methods import simmim

# optimizer.py `get_pretrain_param_groups`: 1-D params, biases and cls_token skip weight
# decay; the mask token and the relative position bias table are decayed.
NO_DECAY_PATTERNS = (r"(^|/)bias$", r"(^|/)scale$", r"(^|/)gamma_\d$", r"(^|/)cls_token$")


def get_config():
  config = defaults.base_config()
  config.method = simmim.method_config()
  config.model = defaults.vit_model_config("base", patch_size=16)
  config.model.update(layer_scale_init=0.1, pos_embedding="shared_rel_bias",
                      drop_path_rate=0.1)
  config.data.source = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.crop_scale = (0.67, 1.0)
  config.data.interpolation = "bilinear"  # torchvision RandomResizedCrop default
  config.batch_size = 2048
  config.num_epochs = 800.0
  config.warmup_epochs = 10.0
  config.optimizer.update(
      base_lr=1e-4, lr_scaling="linear_512", schedule="multistep", decay_epochs=(700,),
      decay_rate=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip=5.0,
      no_decay_patterns=NO_DECAY_PATTERNS)
  # pod setting: FSDP in groups of 16 devices, the fastest setting the TPU compiler
  # estimates on v5e-256 at this batch (docs/RESULTS.md; all devices when fewer)
  config.sharding.update(mode="fsdp", fsdp_size=16)
  return config
