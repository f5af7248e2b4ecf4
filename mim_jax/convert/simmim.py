"""microsoft/SimMIM ViT checkpoints -> Flax params of our `ViTEncoder` and SimMIM head.

The encoder is models/simmim.py `VisionTransformerForSimMIM` over
models/vision_transformer.py `VisionTransformer` as published (USE_APE False,
USE_SHARED_RPB True, INIT_VALUES 0.1, QKV_BIAS True): cls_token, mask_token [1, 1, D],
patch_embed.proj, rel_pos_bias.relative_position_bias_table [(2h−1)(2w−1) + 3, H] with
its relative_position_index buffer [1 + N, 1 + N], blocks.{i}.{norm1, attn.qkv.weight,
attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}, norm.
Pretraining checkpoints (main_simmim.py, state dict under 'model') prefix it with
`encoder.` next to the head `decoder.0` (1×1 conv to p²·3 channels + PixelShuffle(p)).
Our encoder: pos_embedding='shared_rel_bias', layer_scale_init set, use_mask_token.
The head count is the bias table's second dimension.

At another image size the bias table is resized as SimMIM fine-tuning does
(`posemb.resize_rel_pos_bias_table`, utils.py `remap_pretrained_keys_vit`).
"""
import math
from typing import Mapping, Optional

import numpy as np

from mim_jax.convert import common, posemb
from mim_jax.models.vit import relative_position_index

MODEL = "SimMIM ViT encoder (microsoft/SimMIM VisionTransformerForSimMIM)"
TABLE = "rel_pos_bias.relative_position_bias_table"
INDEX = "rel_pos_bias.relative_position_index"
FINETUNE_PREFIXES = ("head.", "fc_norm.")


def _encoder_state_dict(state_dict):
  return common.strip_prefix(state_dict, "encoder.")


def simmim_dims_from_torch(state_dict: Mapping[str, np.ndarray],
                           image_size: Optional[int] = None) -> dict:
  """Sizes of the SimMIM encoder in `state_dict` (`common.encoder_kwargs` reads them) at
  `image_size` (default: the checkpoint's, from the bias table), plus `qkv_bias`,
  `checkpoint_grid_hw`."""
  sd = _encoder_state_dict(state_dict)
  if "pos_embed" in sd:
    raise ValueError("pos_embed: this SimMIM encoder has a learned absolute position "
                     "embedding (USE_APE); our encoder has none: only the published "
                     "shared relative position bias (USE_SHARED_RPB) converts.")
  if "blocks.0.attn.relative_position_bias_table" in sd:
    raise ValueError("blocks.0.attn.relative_position_bias_table: per-block relative "
                     "position biases (USE_RPB) do not convert; our encoder has one shared "
                     f"table ({TABLE}).")
  common.require(sd, (TABLE,), "infer the grid and head count of a SimMIM encoder")
  dims = common.patch_dims(sd, pos_key=None)
  entries, heads = sd[TABLE].shape
  side = (math.isqrt(entries - 3) + 1) // 2
  if (2 * side - 1) ** 2 + 3 != entries:
    raise ValueError(f"{TABLE} has {entries} rows: not (2h-1)^2 + 3 for a square grid.")
  p = dims["patch_size"]
  image_size = side * p if image_size is None else image_size
  if image_size % p:
    raise ValueError(f"image_size={image_size} is not a multiple of the patch size {p}.")
  width = dims["width"]
  dims.update(image_size=image_size, grid_hw=(image_size // p,) * 2,
              checkpoint_grid_hw=(side, side), depth=common.depth_of(sd, "blocks"),
              mlp_ratio=common.mlp_ratio_of(sd, "blocks", width),
              num_heads=common.heads_for(width, int(heads)),
              layer_scale_init=0.1 if "blocks.0.gamma_1" in sd else None,
              pos_embedding="shared_rel_bias", use_mask_token="mask_token" in sd,
              qkv_bias="qv" if "blocks.0.attn.q_bias" in sd else "none")
  return dims


def _expected(dims: dict) -> dict:
  shapes = common.encoder_shapes(dims, dims["qkv_bias"],
                                 "gamma" if dims["layer_scale_init"] else None, pos_embed=False)
  gh, gw = dims["checkpoint_grid_hw"]
  shapes[TABLE] = ((2 * gh - 1) * (2 * gw - 1) + 3, dims["num_heads"])
  if dims["use_mask_token"]:
    shapes["mask_token"] = (1, 1, dims["width"])
  return shapes


def simmim_encoder_from_torch(state_dict: Mapping[str, np.ndarray],
                              image_size: Optional[int] = None) -> dict:
  """`ViTEncoder` params (NumPy float32) of the SimMIM encoder in `state_dict` at
  `image_size` (the bias table resized when it differs from the checkpoint's); build the
  encoder with `common.encoder_kwargs(simmim_dims_from_torch(state_dict, image_size))`.
  Missing, unexpected or misshapen keys, or a relative_position_index buffer other
  than BEiT's layout, raise a ValueError naming them."""
  dims = simmim_dims_from_torch(state_dict, image_size)
  sd = _encoder_state_dict(state_dict)
  common.check_keys(sd, _expected(dims),
                    lambda k: k == INDEX or k.startswith(FINETUNE_PREFIXES), MODEL)
  if INDEX in sd:
    ours = relative_position_index(dims["checkpoint_grid_hw"])
    if not np.array_equal(np.asarray(sd[INDEX]), ours):
      raise ValueError(f"{INDEX} differs from BEiT's layout (mim_jax.models.vit."
                       "relative_position_index), which our encoder uses to read the table.")
  params = common.encoder_params(sd, dims["depth"], dims["qkv_bias"],
                                 "gamma" if dims["layer_scale_init"] else None)
  table = posemb.resize_rel_pos_bias_table(sd[TABLE], dims["checkpoint_grid_hw"],
                                           dims["grid_hw"])
  params["rel_pos_bias"] = {"relative_position_bias_table": common.f32(table)}
  if dims["use_mask_token"]:
    params["mask_token"] = common.f32(sd["mask_token"])
  return params


def simmim_head_from_torch(state_dict: Mapping[str, np.ndarray], patch_size: int) -> dict:
  """Our SimMIM head (Dense to each patch's (p, p, C) pixels) from `decoder.0`, the 1×1
  conv whose p²·C channels PixelShuffle reads as (C, p, p)."""
  common.require(state_dict, ("decoder.0.weight", "decoder.0.bias"), "convert the SimMIM head")
  w = np.asarray(state_dict["decoder.0.weight"])  # [p*p*C, D, 1, 1]
  p = patch_size
  c = w.shape[0] // (p * p)
  if w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[0] != p * p * c or c * p * p == 0:
    raise ValueError(f"decoder.0.weight {tuple(w.shape)} (expected (p*p*C, D, 1, 1) with p = "
                     f"{p}: the encoder stride must equal the patch size, as for ViT).")
  i, j, ch = np.meshgrid(np.arange(p), np.arange(p), np.arange(c), indexing="ij")
  source = (ch * p * p + i * p + j).reshape(-1)  # our unit (i, j, c) <- PixelShuffle channel
  return {"kernel": common.f32(w[source, :, 0, 0].T),
          "bias": common.f32(np.asarray(state_dict["decoder.0.bias"])[source])}


def simmim_from_torch(state_dict: Mapping[str, np.ndarray],
                      image_size: Optional[int] = None) -> dict:
  """{'encoder', 'decoder'} params of our SimMIM method from a pretraining checkpoint."""
  dims = simmim_dims_from_torch(state_dict, image_size)
  return {"encoder": simmim_encoder_from_torch(state_dict, image_size),
          "decoder": simmim_head_from_torch(state_dict, dims["patch_size"])}
