"""What every config file in configs/ starts from: the generic trainer and input-pipeline
defaults (`base_config`) with its evaluators during training (`evaluator_config`), the
standard ViT encoder sizes (`vit_model_config`) and the fields of an evaluation config
(configs/eval/: `eval_config`, `streamed_eval_config`). Imports no JAX model or evaluation
code, so reading a config file stays cheap. Recipes (a method and its fields, decoder
sizes, batch, schedule, optimizer values, data) live in the config files and their named
variants, nowhere else."""
import ml_collections

from mim_jax.data import default_data_config

_placeholder = ml_collections.config_dict.placeholder

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
      layer_scale_init=_placeholder(float),
      pos_embedding="sincos"))  # or 'shared_rel_bias' (mim_jax/models/vit.py ViTEncoder)


def base_config() -> ml_collections.ConfigDict:
  """The trainer's fields with neutral defaults; `batch_size`, `num_epochs` (or
  `num_train_steps`) and `optimizer.base_lr` are left for the recipe to set."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = default_data_config()
  config.batch_size = _placeholder(int)  # effective batch of one optimizer step
  config.grad_accum_steps = 1
  config.num_epochs = _placeholder(float)
  config.num_train_steps = -1  # >= 0 overrides num_epochs
  config.warmup_epochs = 0.0
  config.warmup_steps = -1  # >= 0 overrides warmup_epochs
  # optim.py documents the fields; b1, b2, eps are optax's AdamW defaults, momentum LARS's
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", base_lr=_placeholder(float), lr_scaling="absolute", schedule="cosine",
      min_lr=0.0, min_lr_ratio=0.0, warmup_start_ratio=0.0, decay_epochs=(), decay_steps=(),
      decay_rate=0.1, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, weight_decay=0.0,
      # extra exemptions on top of the official rule (no decay on 1-D params and biases,
      # optim.decay_mask); a method's config lists its official code's skip list here
      no_decay_patterns=(), grad_clip=0.0, layer_decay=1.0, mu_dtype="float32"))
  config.sharding = ml_collections.ConfigDict(dict(mode="data_parallel", fsdp_size=-1,
                                                   fsdp_min_size=2**18))
  config.donate_state = True  # the train step reuses the input state's buffers
  # Evaluators of the online encoder during training, each off until its every_steps > 0
  # (big_vision's config.evals; mim_jax/evaluation/protocols.py `during_training`).
  config.evals = ml_collections.ConfigDict({
      name: evaluator_config(name) for name in ("knn", "linear_probe")})
  config.max_nonfinite_steps = 10  # stop after this many skipped steps in a row
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.image_summary_every_steps = 5000
  config.num_summary_images = 8
  # (first, last): a profiler trace of those train steps in workdir/plugins/profile/
  # (training/progress.py StepTrace); (): none
  config.profile_steps = ()
  return config


def evaluator_config(protocol: str) -> ml_collections.ConfigDict:
  """A `config.evals` entry of `protocol`, off (mim_jax/evaluation/monitor.py): every
  `every_steps` steps (0: off) and at the last one, the first `num_train` / `num_eval`
  examples (-1: all) of `train_split` / `eval_split` (None: config.data's) are encoded
  (eval preprocessing, feature batch `batch_size`; `pool` / `block` None: the method's
  `eval_defaults`), then 'knn': weighted k-NN (`k`, `temperature`), scalars knn_top1 and
  nn1_top1; 'linear_probe': a short probe (`epochs`, `warmup_epochs`, `base_lr` at batch
  `probe_batch_size`; configs/eval/linear_probe.py:cifar's, shorter), scalar
  linear_probe_top1."""
  entry = ml_collections.ConfigDict(dict(
      protocol=protocol, every_steps=0, train_split=_placeholder(str),
      eval_split=_placeholder(str), num_train=10_000, num_eval=2_000, batch_size=256,
      pool=_placeholder(str), block=_placeholder(int)))
  if protocol == "knn":
    entry.update(k=20, temperature=0.07)
  elif protocol == "linear_probe":
    entry.update(epochs=10, warmup_epochs=1.0, base_lr=6.4, probe_batch_size=256)
  else:
    raise ValueError(f"No evaluator during training for protocol {protocol!r}; choose "
                     "'knn' or 'linear_probe'.")
  return entry


def data_overrides() -> ml_collections.ConfigDict:
  """Every `config.data` field as None (= take the pretraining run's value)."""
  return ml_collections.ConfigDict({
      name: _placeholder(tuple if isinstance(value, (tuple, list)) else
                         str if name in ("path", "data_dir") else type(value))
      for name, value in default_data_config().items()})


def eval_config(protocol: str) -> ml_collections.ConfigDict:
  """The generic fields of an evaluation on features computed once (`features`
  'precomputed'; mim_jax/evaluation/run.py documents them); configs/eval/<protocol>.py
  adds the protocol's hyper-parameters (`config.knn`, `config.linear_probe`,
  `config.attentive_probe`)."""
  config = ml_collections.ConfigDict()
  config.pretrained = _placeholder(str)
  config.pretrained_step = _placeholder(int)
  config.use_target = False
  config.protocol = protocol
  config.features = "precomputed"
  config.pool = _placeholder(str)
  config.block = _placeholder(int)
  config.data = data_overrides()
  config.num_classes = _placeholder(int)
  config.eval_batch_size = 256
  config.seed = 0
  return config


def streamed_eval_config(protocol: str) -> ml_collections.ConfigDict:
  """The trainer's fields (`base_config`) and those of a run of the generic trainer on a
  pretrained encoder (`features` 'streamed'; mim_jax/evaluation/downstream.py):
  `pretrained` (its workdir), `pretrained_step` (None: the newest checkpoint),
  `use_target` (the EMA target encoder of Latent MIM or PCAE), `num_classes` (None: the
  data's classes), `pool` (None: what the pretraining method declares for `protocol`,
  `Method.eval_defaults`), `data` and `sharding` (every field None: as in the pretraining
  run, whose sharding suits its model: FSDP in groups of 16 for the ImageNet recipes),
  `eval_every_steps` / `eval_batch_size` (top-1 on data.eval_split). The protocol's
  config file adds `method` and the recipe."""
  config = base_config()
  del config["seed"]  # the pretraining run's (the same synthetic set)
  config.protocol = protocol
  config.features = "streamed"
  config.pretrained = _placeholder(str)
  config.pretrained_step = _placeholder(int)
  config.use_target = False
  config.num_classes = _placeholder(int)
  config.pool = _placeholder(str)
  config.data = data_overrides()
  config.sharding = ml_collections.ConfigDict({
      name: _placeholder(type(value)) for name, value in config.sharding.items()})
  config.eval_every_steps = 0  # 0: only at the end
  config.eval_batch_size = 1024
  config.image_summary_every_steps = 0
  return config
