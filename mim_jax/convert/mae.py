"""facebookresearch/mae PyTorch checkpoints -> Flax params of `ViTEncoder` and `MAEDecoder`.

Key names and shapes are those of mae/models_mae.py `MaskedAutoencoderViT`, built from
timm 0.3.2 `PatchEmbed` and `Block` (timm/models/vision_transformer.py):
  cls_token [1, 1, D], pos_embed [1, 1 + N, D], patch_embed.proj.{weight [D, C, p, p], bias},
  blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}, norm.*;
  decoder: mask_token [1, 1, Dd], decoder_embed.*, decoder_pos_embed [1, 1 + N, Dd],
  decoder_blocks.{i}.*, decoder_norm.*, decoder_pred.*.
Position embeddings are not parameters of our modules: they are checked against
`sincos_2d` and dropped (our modules recompute them at any image size).

Usage:
  sd = load_torch_state_dict("mae_pretrain_vit_base.pth")
  dims = vit_dims_from_torch(sd)
  encoder = ViTEncoder(image_size=dims["image_size"], patch_size=dims["patch_size"],
                       width=dims["width"], depth=dims["depth"], num_heads=dims["num_heads"],
                       mlp_ratio=dims["mlp_ratio"])
  encoder.apply({"params": mae_encoder_from_torch(sd)}, images, visible_idx)
"""
from typing import Mapping

import numpy as np

from mim_jax.convert import common
from mim_jax.convert.common import DEFAULT_DECODER_HEADS, DEFAULT_HEADS, load_torch_state_dict

# Classifier keys of fine-tuned checkpoints (mae/models_vit.py); not part of pretraining.
FINETUNE_PREFIXES = ("head.", "fc_norm.")
MODEL = "MAE model"

__all__ = ["load_torch_state_dict", "vit_dims_from_torch", "mae_encoder_from_torch",
           "mae_from_torch"]


def _is_decoder_key(key: str) -> bool:
  return key == "mask_token" or key.startswith("decoder_")


def vit_dims_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Model sizes read off the shapes of an MAE state dict.

  Returns patch_size, in_chans, image_size, grid_hw, width, depth, mlp_ratio, num_heads,
  decoder_width, decoder_depth, decoder_num_heads, decoder_out_dim (the decoder entries
  are None for encoder-only checkpoints). Head counts are not stored in a state dict:
  num_heads / decoder_num_heads are the published defaults for the width (DEFAULT_HEADS,
  DEFAULT_DECODER_HEADS), None for other widths; the caller passes the true counts
  when building the modules.
  """
  dims = common.patch_dims(state_dict)
  width = dims["width"]
  dims = dict(patch_size=dims["patch_size"], in_chans=dims["in_chans"],
              image_size=dims["image_size"], grid_hw=dims["grid_hw"], width=width,
              depth=common.depth_of(state_dict, "blocks"),
              mlp_ratio=common.mlp_ratio_of(state_dict, "blocks", width),
              num_heads=DEFAULT_HEADS.get(width), decoder_width=None, decoder_depth=None,
              decoder_num_heads=None, decoder_out_dim=None)
  if any(_is_decoder_key(k) for k in state_dict):
    common.require(state_dict, ("decoder_embed.weight",), "infer the decoder width")
    decoder_width = int(state_dict["decoder_embed.weight"].shape[0])
    dims.update(decoder_width=decoder_width,
                decoder_depth=common.depth_of(state_dict, "decoder_blocks"),
                decoder_num_heads=DEFAULT_DECODER_HEADS.get(decoder_width),
                decoder_out_dim=int(dims["patch_size"] ** 2 * dims["in_chans"]))
  return dims


def _decoder_shapes(dims: dict) -> dict:
  dd, n = dims["decoder_width"], dims["grid_hw"][0] * dims["grid_hw"][1]
  shapes = {"mask_token": (1, 1, dd), "decoder_pos_embed": (1, 1 + n, dd)}
  shapes.update(common.linear_shapes("decoder_embed", dd, dims["width"]))
  shapes.update(common.blocks_shapes("decoder_blocks", dims["decoder_depth"], dd,
                                     int(dd * dims["mlp_ratio"])))
  shapes.update(common.norm_shapes("decoder_norm", dd))
  shapes.update(common.linear_shapes("decoder_pred", dims["decoder_out_dim"], dd))
  return shapes


def _decoder_params(sd, dims: dict) -> dict:
  params = {"decoder_embed": common.linear(sd, "decoder_embed"),
            "mask_token": common.f32(sd["mask_token"]),
            "decoder_norm": common.norm(sd, "decoder_norm"),
            "decoder_pred": common.linear(sd, "decoder_pred")}
  for i in range(dims["decoder_depth"]):
    params[f"decoder_blocks_{i}"] = common.block(sd, f"decoder_blocks.{i}")
  return params


def mae_encoder_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """`ViTEncoder` params (NumPy float32) from an MAE state dict, with or without decoder.

  Decoder keys and fine-tuning heads (`head.*`, `fc_norm.*`) are ignored with a log note;
  any other missing, unexpected or misshapen key, or a pos_embed other than the fixed
  sin-cos one, is a ValueError.
  """
  dims = vit_dims_from_torch(state_dict)
  common.check_keys(state_dict, common.encoder_shapes(dims),
                    lambda k: k.startswith(FINETUNE_PREFIXES) or _is_decoder_key(k), MODEL)
  common.check_sincos(state_dict, "pos_embed", dims["grid_hw"])
  return common.encoder_params(state_dict, dims["depth"])


def mae_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """{'encoder': ViTEncoder params, 'decoder': MAEDecoder params} from a full MAE state dict
  (mae/models_mae.py `MaskedAutoencoderViT.state_dict()`), as NumPy float32 arrays.

  Build the decoder as MAEDecoder(grid_hw, out_dim=decoder_out_dim, width=decoder_width,
  depth=decoder_depth, num_heads=...) with the sizes from `vit_dims_from_torch`.
  """
  dims = vit_dims_from_torch(state_dict)
  if dims["decoder_width"] is None:
    raise ValueError("No decoder keys (decoder_embed.*, decoder_blocks.*, mask_token, ...): "
                     "this is an encoder-only checkpoint such as the published "
                     "mae_pretrain_vit_*.pth; use mae_encoder_from_torch.")
  common.check_keys(state_dict, {**common.encoder_shapes(dims), **_decoder_shapes(dims)},
                    lambda k: k.startswith(FINETUNE_PREFIXES), MODEL)
  common.check_sincos(state_dict, "pos_embed", dims["grid_hw"])
  common.check_sincos(state_dict, "decoder_pos_embed", dims["grid_hw"])
  return {"encoder": common.encoder_params(state_dict, dims["depth"]),
          "decoder": _decoder_params(state_dict, dims)}
