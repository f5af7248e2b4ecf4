"""End-to-end fine-tuning of a pretrained encoder for classification, run by the generic
trainer as one more `Method` (mim_jax/evaluation/downstream.py).

Follows facebookresearch/mae main_finetune.py and models_vit.py: the pretrained encoder
with drop path (0.1), pooled by the mean of the last block's patch tokens followed by a
fresh LayerNorm `fc_norm` in place of the final norm (`global_pool`; `config.pool='mean'`)
or by the final-normed cls token (`config.pool='cls'`); None takes the pretraining
method's declared default (`Method.eval_defaults`). A linear head initialised
trunc-normal(2e-5) with zero bias; mixup 0.8 / cutmix 1.0 (switch probability 0.5) with
label smoothing 0.1 on the targets (mixup.py) and soft-target cross-entropy; AdamW
(0.9, 0.999), wd 0.05 (none on biases, norms, tokens), layer-wise lr decay 0.65
(optim.layer_decay_multipliers); warmup 5 then cosine over 100 epochs. The train batches
get the pipeline's RandomResizedCrop + flip, RandAugment and random erasing
(config.data, mim_jax/data/augment.py).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.evaluation import downstream, mixup
from mim_jax.models import vit


class ViTClassifier(nn.Module):
  """Encoder -> pooled feature -> linear head (mae/models_vit.py `VisionTransformer`).

  'mean': mean of the last block's patch tokens (no cls, no final norm), then `fc_norm`;
  'cls': the cls token after the encoder's final norm."""
  encoder: vit.ViTEncoder
  num_classes: int
  pool: str = "mean"
  head_init_std: float = 2e-5

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    if self.pool == "mean":
      tokens = self.encoder(images, deterministic=deterministic, block=self.encoder.depth)
      pooled = tokens[:, 1:].astype(jnp.float32).mean(axis=1)  # [B, D]
      features = nn.LayerNorm(epsilon=vit.LN_EPS, name="fc_norm")(pooled)
    else:
      features = self.encoder(images, deterministic=deterministic)[:, 0].astype(jnp.float32)
    head_init = (nn.initializers.truncated_normal(self.head_init_std) if self.head_init_std > 0
                 else nn.initializers.zeros)
    return nn.Dense(self.num_classes, kernel_init=head_init, name="head")(features)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of −Σ_c targets·log softmax(logits) (timm SoftTargetCrossEntropy)."""
  return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))


class FineTune(downstream.EncoderMethod):
  """Config (configs/eval/finetune.py): `pool`; `method.head_init_std`,
  `method.drop_path_rate`, `method.mixup_alpha`, `method.cutmix_alpha`,
  `method.mix_prob`, `method.switch_prob`, `method.label_smoothing`; the fields of
  defaults.streamed_eval_config. The encoder is the pretraining method's `eval_encoder`
  with drop path; params {'encoder', 'fc_norm', 'head'}."""

  description = "Fine-tuning"
  pools = ("mean", "cls")

  def __init__(self, config, total_steps=None, pretrain_config=None):
    super().__init__(config, total_steps, pretrain_config,
                     drop_path_rate=config.model.drop_path_rate)
    self.classifier = ViTClassifier(self.pretrained_encoder.module,
                                    num_classes=self.num_classes, pool=config.pool,
                                    head_init_std=config.method.head_init_std)

  def init(self, rng, batch):
    return self.classifier.init(rng, batch["image"])["params"]

  def warm_start(self, params, target_params):
    """The pretrained encoder's weights in place of the initialised ones; the head and
    fc_norm keep their initialisation. The final norm is dropped with mean pooling."""
    return {**params, "encoder": self.pretrained_params(params["encoder"])}, target_params

  def loss(self, params, target_params, batch, masks, rng, step):
    m = self.config.method
    mix_rng, drop_rng = jax.random.split(rng)
    images, targets, lam = mixup.mixup_cutmix(
        mix_rng, batch["image"], batch["label"], num_classes=self.num_classes,
        mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.mix_prob,
        switch_prob=m.switch_prob, smoothing=m.label_smoothing)
    logits = self.classifier.apply({"params": params}, images, deterministic=False,
                                   rngs={"dropout": drop_rng})
    return soft_cross_entropy(logits, targets), {"mix_lambda": lam}

  def logits(self, params, target_params, images):
    return self.classifier.apply({"params": params}, images)
