"""Attentive probe (CAE, Chen et al. 2023, Sec. 4.2; Atten4Vis/CAE tools/run_attentive.py,
models/modeling_finetune.py `AttentiveBlock`, `linear_type='attentive'`).

One learned query token (zero-initialised) cross-attends to all frozen encoder tokens
(cls + patches, after the final norm): q = LN_q(query), k = LN_k(tokens), v =
LN_v(tokens), multi-head attention with an output projection, and nothing else (no MLP,
no residual). Its output -> BatchNorm without affine (CAE `LP_BatchNorm`, eps 1e-5) ->
Linear (N(0, 0.01²), zero bias). Trained with SGD, Nesterov momentum 0.9 (timm's
'sgd'), lr 0.4 not scaled by batch (run_attentive.py; CAE's total batch is 256 × 32 GPUs =
8192, scripts/cae_base_800e.sh), wd 0, 10 warmup epochs then cosine to 1e-6, 90 epochs,
cross-entropy.

Design choice, as the small-data linear probe: tokens are precomputed once from the
un-augmented train split (features.py), where CAE draws RandomResizedCrop(0.08–1) + flip
each epoch, and the final epoch's accuracy is reported (CAE logs its best epoch's). They
take N·(1 + L)·D floats, which suits CIFAR-sized sets rather than ImageNet.
"""
from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax.evaluation import linear_probe
from mim_jax.models import vit


class AttentivePooling(nn.Module):
  """[B, T, D] tokens -> [B, D]: one learned query's cross-attention output.

  The key projection's bias of CAE's CrossAttention is fixed at zero; ours is learned
  but adds the same logit to every key of a query, so it leaves the softmax unchanged.
  """
  num_heads: int

  @nn.compact
  def __call__(self, tokens):
    b, _, d = tokens.shape
    query = self.param("query_token", nn.initializers.zeros, (1, 1, d))
    norm = lambda name: nn.LayerNorm(epsilon=vit.LN_EPS, name=name)
    q = norm("norm_q")(jnp.broadcast_to(query, (b, 1, d)))
    k, v = norm("norm_k")(tokens), norm("norm_v")(tokens)
    return vit.Attention(self.num_heads, name="cross_attn")(q, context=k, values=v)[:, 0]


class AttentiveProbe(nn.Module):
  num_classes: int
  num_heads: int
  bn_eps: float = 1e-5

  @nn.compact
  def __call__(self, tokens, train: bool):
    pooled = AttentivePooling(self.num_heads, name="pool")(tokens)
    return linear_probe.LinearProbe(self.num_classes, self.bn_eps, name="linear")(pooled, train)


def train_attentive_probe(train_tokens: np.ndarray, train_labels: np.ndarray,
                          test_tokens: np.ndarray, test_labels: np.ndarray, *,
                          num_classes: int, epochs: int = 90, batch_size: int = 256,
                          lr: float = 0.4, num_heads: int = 12, seed: int = 0,
                          warmup_epochs: float = 10, min_lr: float = 1e-6,
                          bn_eps: float = 1e-5,
                          eval_batch_size: int = 256,
                          log_fn: Optional[linear_probe.LogFn] = None) -> Dict[str, Any]:
  """Attentive probe on [N, 1 + L, D] tokens; returns fit_classifier's dict ('top1' in
  percent) plus 'peak_lr' and 'warnings' (`linear_probe.size_warnings`). `num_heads` must
  divide D (CAE uses the encoder's heads)."""
  train_x, train_y, test_x, test_y = linear_probe.probe_arrays(
      train_tokens, train_labels, test_tokens, test_labels, ndim=3,
      shape_hint="[N, T, D] tokens (pool='tokens')", num_classes=num_classes,
      batch_size=batch_size, epochs=epochs)
  if num_heads < 1 or train_x.shape[-1] % num_heads:
    raise ValueError(f"num_heads={num_heads} must divide the token width "
                     f"{train_x.shape[-1]}.")
  batch_size, steps_per_epoch, warnings = linear_probe.probe_batches(
      batch_size, len(train_x), epochs, "attentive_probe")
  lr_fn = linear_probe.warmup_cosine(lr, epochs * steps_per_epoch,
                                     int(round(warmup_epochs * steps_per_epoch)), min_lr)
  tx = optax.sgd(lr_fn, momentum=0.9, nesterov=True)
  model = AttentiveProbe(num_classes, num_heads, bn_eps)
  result = linear_probe.fit_classifier(model, tx, train_x, train_y, test_x, test_y,
                                       epochs=epochs, batch_size=batch_size, seed=seed,
                                       lr_fn=lr_fn, eval_batch_size=eval_batch_size,
                                       log_fn=log_fn)
  result.update(peak_lr=lr, warnings=warnings)
  return result
