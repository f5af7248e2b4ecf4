"""Latent MIM (Wei, Gupta, Morgado, "Towards Latent Masked Image Modeling for
Self-Supervised Visual Representation Learning", ECCV 2024; yibingwei-1/LatentMIM
`configs/lmim.yaml`, `main_lmim.py`, `util/lr_sched.py`).

python -m mim_jax.main --config=configs/latent_mim.py:vit_base --workdir=DIR \
    --config.data.data_dir=/path/to/tensorflow_datasets
Every rung of the paper's ablation ladder is a `config.method` field (README "Latent
MIM"); the training image side follows `method.patch_gap`: grid·(patch + gap) px.
"""
from mim_jax import config_files, defaults

common = config_files.sibling(__file__, "common.py")


def latent_mim(size="base", patch_size=16):
  """Latent MIM's method (gap 4, 20 of 196 patches visible, momentum target 0.99 → 1,
  PatchDisc τ 0.2, cross-attention decoder with visual cues 512×3, projector 3 layers of
  4096, similarity regulariser 0.1 with goal 0.75 → 0.25) and optimizer: MAE's AdamW
  (0.9, 0.95), wd 0.05, lr 1.5e-4·batch/256, warmed up from 0.25·lr and cosine back to it
  (util/lr_sched.py, min_lr_frac 0.25); main_lmim.py also exempts from weight decay every
  parameter named 'embed' (the patch embedding, the decoder's input projection)."""
  config = defaults.base_config()
  config.model = defaults.vit_model_config(size, patch_size)
  config.model.update(decoder_width=512, decoder_depth=3, decoder_num_heads=16)
  config.method = dict(
      name="latent_mim", patch_gap=4, mask_ratio=0.9, target_mode="momentum",
      target_momentum=0.99, loss="patchdisc", tau=0.2, huber_delta=1.0,
      decoder="cross_attn_cues", projector_depth=3, projector_hidden=4096,
      sim_reg_coeff=0.1, sim_reg_start=0.75, sim_reg_end=0.25)
  config.optimizer.update(base_lr=1.5e-4, lr_scaling="linear_256", b1=0.9, b2=0.95,
                          weight_decay=0.05, min_lr_ratio=0.25, warmup_start_ratio=0.25,
                          no_decay_patterns=(r"embed",))
  return config


def grid_with_gap(config, grid):
  """data.image_size = grid·(patch + gap), following later changes of either field."""
  config.data.image_size = grid * (config.model.get_ref("patch_size") +
                                   config.method.get_ref("patch_gap"))
  return config


def published(size):
  """ImageNet-1k at 14·(16 + 4) = 280 px, batch 4096, 800 epochs (40 warmup),
  RandomResizedCrop(280, 0.2–1) + flip; FSDP in groups of 16 devices
  (common.imagenet)."""
  return grid_with_gap(common.mae_imagenet_run(latent_mim(size)), 14)


def vit_base():
  """Latent MIM ViT-B/16 on ImageNet-1k at 280 px (14·(16 + 4)): the published recipe."""
  return published("base")


def vit_large():
  """Latent MIM ViT-L/16 on ImageNet-1k at 280 px: the published recipe, FSDP."""
  return published("large")


def cifar():
  """Latent MIM on the CIFAR-10 subset: the comparison's ViT on 8×8 windows of 4 px with
  a 1 px gap (40 px training images, 32 px evaluation), mask 0.75, projector hidden 768,
  decoder 128×2."""
  config = common.cifar_run(latent_mim())
  config.model.update(decoder_width=128, decoder_depth=2, decoder_num_heads=4)
  # gap/patch 1/4 as the published 4/16; 0.75 (the paper's own ablation value): 0.9
  # would leave 6 of 64 patches visible; hidden 4× the width (published 4096 ≈ 5×768)
  config.method.update(patch_gap=1, mask_ratio=0.75, projector_hidden=768)
  return grid_with_gap(config, 8)


def cifar_collapse():
  """Latent MIM's first ablation rung on the CIFAR-10 subset (MSE, mask 0.75, no gap,
  self-attention decoder, no projector, no regulariser): docs/RESULTS.md, collapse study."""
  config = cifar()
  config.method.update(loss="mse", mask_ratio=0.75, patch_gap=0, decoder="self_attn",
                       projector_depth=0, sim_reg_coeff=0.0)
  return config


VARIANTS = {"vit_base": vit_base, "vit_large": vit_large, "cifar": cifar,
            "cifar_collapse": cifar_collapse}


def get_config(arg="vit_base"):
  return config_files.pick(VARIANTS, arg)
