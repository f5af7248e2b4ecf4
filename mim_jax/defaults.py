"""What every config file in configs/ starts from: the generic trainer and input-pipeline
defaults (`base_config`) and the standard ViT encoder sizes (`vit_model_config`).
Recipes (a method and its fields, decoder sizes, batch, schedule, optimizer values, data)
live in the config files and their named variants, nowhere else."""
import ml_collections

from mim_jax.data import default_data_config

# (width, depth, num_heads) of the standard ViT sizes.
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def vit_model_config(size: str, patch_size: int = 16) -> ml_collections.ConfigDict:
  """`config.model` with an encoder of a standard ViT size (Dosovitskiy et al. 2021,
  Table 1; ViT-Ti from DeiT) and the speed options off; a method's config adds its
  decoder fields."""
  if size not in VIT_SIZES:
    raise ValueError(f"Unknown ViT size {size!r}; choose one of {sorted(VIT_SIZES)}.")
  width, depth, heads = VIT_SIZES[size]
  return ml_collections.ConfigDict(dict(
      patch_size=patch_size, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
      drop_path_rate=0.0, dtype="float32",
      # Speed options (mim_jax/models/vit.py): activation rematerialisation policy per block
      # ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable'), nn.scan over
      # the encoder/MAE-decoder blocks (stacked param layout), attention kernel ('xla',
      # or 'cudnn': fused, GPU, bfloat16). `dtype` is the compute dtype; params and the
      # loss stay float32.
      remat="none", scan_layers=False, attention_impl="xla",
      layer_scale_init=ml_collections.config_dict.placeholder(float),
      pos_embedding="sincos"))  # or 'shared_rel_bias' (mim_jax/models/vit.py ViTEncoder)


def base_config() -> ml_collections.ConfigDict:
  """The trainer's fields with neutral defaults; `batch_size`, `num_epochs` (or
  `num_train_steps`) and `optimizer.base_lr` are left for the recipe to set."""
  placeholder = ml_collections.config_dict.placeholder
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = default_data_config()
  config.batch_size = placeholder(int)  # effective batch of one optimizer step
  config.grad_accum_steps = 1
  config.num_epochs = placeholder(float)
  config.num_train_steps = -1  # >= 0 overrides num_epochs
  config.warmup_epochs = 0.0
  config.warmup_steps = -1  # >= 0 overrides warmup_epochs
  # optim.py documents the fields; b1, b2, eps are optax's AdamW defaults, momentum LARS's
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", base_lr=placeholder(float), lr_scaling="absolute", schedule="cosine",
      min_lr=0.0, min_lr_ratio=0.0, warmup_start_ratio=0.0, decay_epochs=(), decay_steps=(),
      decay_rate=0.1, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, weight_decay=0.0,
      # extra exemptions on top of the official rule (no decay on 1-D params and biases,
      # optim.decay_mask); a method's config lists its official code's skip list here
      no_decay_patterns=(), grad_clip=0.0, layer_decay=1.0))
  config.sharding = ml_collections.ConfigDict(dict(mode="data_parallel", fsdp_size=-1,
                                                   fsdp_min_size=2**18))
  config.donate_state = True  # the train step reuses the input state's buffers
  # k-NN top-1 of the online encoder on held-out data during pretraining, written to
  # TensorBoard as knn_top1 (mim_jax/evaluation/monitor.py); every_steps=0: off.
  config.knn_monitor = ml_collections.ConfigDict(dict(
      every_steps=0, train_split=ml_collections.config_dict.placeholder(str),
      eval_split=ml_collections.config_dict.placeholder(str), num_train=10_000,
      num_eval=2_000, batch_size=256, pool=placeholder(str),
      block=ml_collections.config_dict.placeholder(int), k=20, temperature=0.07))
  config.max_nonfinite_steps = 10  # stop after this many skipped steps in a row
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.image_summary_every_steps = 5000
  config.num_summary_images = 8
  return config
