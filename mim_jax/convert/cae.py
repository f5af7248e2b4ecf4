"""Atten4Vis/CAE PyTorch checkpoints -> Flax params of our `ViTEncoder`.

The encoder is models/modeling_cae_helper.py `VisionTransformerEncoder`: timm
`PatchEmbed`, cls token, a fixed sin-cos `pos_embed` [1, 1 + N, D] with a zero cls row,
BEiT blocks (attn.qkv.weight without bias, attn.q_bias / attn.v_bias with a zero key
bias, gamma_1 / gamma_2 LayerScale when init_values > 0), final `norm`, LayerNorm eps
1e-6. Pretraining checkpoints (`tools/run_pretraining.py`, state dict under 'model')
prefix it with `encoder.` next to `alignment_encoder.*`, `regresser.*`, `decoder.*`,
`mask_token`, `rd_pos_embed`; only `encoder.*` is read (as run_class_finetuning.py does).
A state dict without that prefix is read as the encoder itself.

CAE's `build_2d_sincos_position_embedding` puts the ROW index in the first D/2 channels
(torch.meshgrid 'ij' over (w, h)); MAE's, which our encoder computes, puts the column
first. No weights reproduce one from the other, but permuting the residual channels of
the whole encoder by a half swap does, exactly: our output channel c is the official
channel (c + D/2) mod D (`cae_channel_permutation`). Linear probes, fine-tuning, k-NN
and attention maps do not depend on the channel order; `features[..., perm]` with
perm = cae_channel_permutation(D) gives the official order back (the swap is its own
inverse). A checkpoint whose pos_embed is already MAE's layout is converted unpermuted.
"""
from typing import Mapping, Optional

import numpy as np

from mim_jax.convert import common

MODEL = "CAE encoder (Atten4Vis/CAE VisionTransformerEncoder)"
FINETUNE_PREFIXES = ("head.", "fc_norm.")


def cae_channel_permutation(width: int) -> np.ndarray:
  """perm with ours[..., c] = official[..., perm[c]]: the two halves swapped."""
  return np.roll(np.arange(width), -(width // 2))


def _encoder_state_dict(state_dict):
  return common.strip_prefix(state_dict, "encoder.")


def cae_dims_from_torch(state_dict: Mapping[str, np.ndarray],
                        num_heads: Optional[int] = None) -> dict:
  """Sizes of the CAE encoder in `state_dict` (pretraining or stripped), as
  `common.encoder_kwargs` reads them, plus `qkv_bias` ('qv' or 'none'),
  `channels_permuted` (CAE's sin-cos layout: see the module docstring).
  `num_heads`: not stored in a state dict; default: the published count for the width."""
  sd = _encoder_state_dict(state_dict)
  dims = common.patch_dims(sd)
  width = dims["width"]
  depth = common.depth_of(sd, "blocks")
  layer_scale = "blocks.0.gamma_1" in sd
  qkv_bias = "qv" if "blocks.0.attn.q_bias" in sd else "none"
  mae_err = common.sincos_error(sd["pos_embed"], dims["grid_hw"])
  cae_err = common.sincos_error(sd["pos_embed"], dims["grid_hw"], swap_halves=True)
  if min(mae_err, cae_err) > common.POS_EMBED_TOL:
    raise ValueError(
        f"pos_embed is not CAE's fixed 2-D sin-cos embedding (max |diff| {cae_err:.2e}) nor "
        f"MAE's ({mae_err:.2e}), tolerance {common.POS_EMBED_TOL:g}: our encoder cannot hold "
        "a learned position embedding.")
  dims.update(depth=depth, mlp_ratio=common.mlp_ratio_of(sd, "blocks", width),
              num_heads=common.heads_for(width, num_heads),
              layer_scale_init=0.1 if layer_scale else None, pos_embedding="sincos",
              use_mask_token=False, qkv_bias=qkv_bias,
              channels_permuted=bool(cae_err <= common.POS_EMBED_TOL < mae_err))
  return dims


def permute_channels(params: dict, perm: np.ndarray) -> dict:
  """`ViTEncoder` params computing the same function with residual channels reordered:
  new channel c is old channel perm[c] (LayerNorm is equivariant to the order)."""
  out = {"patch_embed": {"kernel": params["patch_embed"]["kernel"][:, perm],
                         "bias": params["patch_embed"]["bias"][perm]},
         "norm": {k: v[perm] for k, v in params["norm"].items()}}
  for name in ("cls_token", "mask_token"):
    if name in params:
      out[name] = params[name][..., perm]
  for name, blk in params.items():
    if not name.startswith("blocks_"):
      continue
    attn, mlp = blk["attn"], blk["mlp"]
    new = {"norm1": {k: v[perm] for k, v in blk["norm1"].items()},
           "norm2": {k: v[perm] for k, v in blk["norm2"].items()},
           "attn": {"qkv": {"kernel": attn["qkv"]["kernel"][perm], "bias": attn["qkv"]["bias"]},
                    "proj": {"kernel": attn["proj"]["kernel"][:, perm],
                             "bias": attn["proj"]["bias"][perm]}},
           "mlp": {"fc1": {"kernel": mlp["fc1"]["kernel"][perm], "bias": mlp["fc1"]["bias"]},
                   "fc2": {"kernel": mlp["fc2"]["kernel"][:, perm],
                           "bias": mlp["fc2"]["bias"][perm]}}}
    for g in ("gamma_1", "gamma_2"):
      if g in blk:
        new[g] = blk[g][perm]
    out[name] = new
  return {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v)
          for k, v in out.items()}


def cae_encoder_from_torch(state_dict: Mapping[str, np.ndarray],
                           num_heads: Optional[int] = None) -> dict:
  """`ViTEncoder` params (NumPy float32) of the CAE encoder in `state_dict`; build the
  encoder with `common.encoder_kwargs(cae_dims_from_torch(state_dict))` (any image size:
  the sin-cos embedding is recomputed). Missing, unexpected (other than `head.*`,
  `fc_norm.*`) or misshapen encoder keys raise a ValueError naming them."""
  dims = cae_dims_from_torch(state_dict, num_heads)
  sd = _encoder_state_dict(state_dict)
  common.check_keys(sd, common.encoder_shapes(dims, dims["qkv_bias"],
                                              "gamma" if dims["layer_scale_init"] else None),
                    lambda k: k.startswith(FINETUNE_PREFIXES), MODEL)
  params = common.encoder_params(sd, dims["depth"], dims["qkv_bias"],
                                 "gamma" if dims["layer_scale_init"] else None)
  if dims["channels_permuted"]:
    params = permute_channels(params, cae_channel_permutation(dims["width"]))
  return params
