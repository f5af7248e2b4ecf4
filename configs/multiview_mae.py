"""Multi-View MAE (Ji, Han, Rhee, "Multi-View Masked Autoencoder for General Image
Representation", Applied Sciences 2023; no public code, ../shared/docs/METHODS.md §6).

python -m mim_jax.main --config=configs/multiview_mae.py:vit_base --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Ablations: --config.method.mask_ratio=0.5 ... 0.95, --config.method.contrastive_weight=0.1
... 2.0, --config.model.decoder_depth=1 ... 12, --config.method.contrastive=False,
--config.method.two_targets=False; readings: --config.method.cross_head=shared,
--config.method.pool=cls, --config.method.temperature=0.2. The 84.3 fine-tune result is
after 1600 epochs: --config.num_epochs=1600.
"""
from mim_jax import config_files, defaults

common = config_files.sibling(__file__, "common.py")


def multiview_mae(size="base", patch_size=16):
  """The paper's best ablation settings (§4.3): two views, 80% of each hidden, λ = 2.0,
  decoder depth 8 (MAE's; 4 and 8 tie), two different targets; NT-Xent τ = 0.1 and the
  projector 2048 → 128 (SimCLR's). The rest is MAE's recipe: decoder 512 wide, 16 heads,
  AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4·batch/256."""
  config = defaults.base_config()
  config.model = defaults.vit_model_config(size, patch_size)
  config.model.update(decoder_width=512, decoder_depth=8, decoder_num_heads=16)
  config.method = dict(name="multiview_mae", mask_ratio=0.8, norm_pix_loss=True,
                       contrastive=True, contrastive_weight=2.0, temperature=0.1, pool="mean",
                       proj_hidden_dim=2048, proj_dim=128, two_targets=True,
                       cross_head="separate")
  config.optimizer.update(base_lr=1.5e-4, lr_scaling="linear_256", b1=0.9, b2=0.95,
                          weight_decay=0.05)
  return config


def vit_base():
  """Multi-View MAE ViT-B/16 on ImageNet-1k: MAE's recipe (batch 4096, 800 epochs), two
  RandomResizedCrop(224, 0.2–1) + flip views per image."""
  return common.mae_imagenet_run(multiview_mae())


def cifar():
  """Multi-View MAE on the CIFAR-10 subset: the comparison's ViT, decoder 128×2,
  projector 512 → 128."""
  config = common.cifar_run(multiview_mae())
  config.model.update(decoder_width=128, decoder_depth=2, decoder_num_heads=4)
  config.method.update(proj_hidden_dim=512, proj_dim=128)
  return config



VARIANTS = {"vit_base": vit_base, "cifar": cifar}


def get_config(arg="vit_base"):
  return config_files.pick(VARIANTS, arg)
