"""Our `ViTEncoder` <-> a timm `VisionTransformer` state dict (vit_base_patch16_224 layout).

timm keys (timm/models/vision_transformer.py, class token, no register tokens):
  patch_embed.proj.{weight [D, C, p, p], bias}, cls_token [1, 1, D],
  pos_embed [1, 1 + N, D] (the cls row included), blocks.{i}.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}.{weight, bias}, blocks.{i}.ls1.gamma / ls2.gamma when the
  encoder has LayerScale, norm.{weight, bias}, and optionally head.{weight, bias}.
Build the timm model with timm.create_model('vit_base_patch16_224', num_classes=0 (or the
head's classes), img_size=..., init_values=<any> when LayerScale, global_pool='token').

Position embeddings: our 'sincos' encoder's embedding is written out at the export image
size (a zero cls row + sincos_2d, exact at any size, no resampling); on import it must be
that fixed embedding at its own grid and is dropped (our encoder recomputes it at any
`image_size`). A learned timm pos_embed cannot be held by our encoder: import refuses it
(`posemb.resample_abs_pos_embed` resizes it for timm itself). Encoders with the shared
relative position bias (SimMIM) have no timm VisionTransformer equivalent.
"""
from typing import Mapping, Optional, Tuple

import numpy as np

from mim_jax.convert import common
from mim_jax.models.vit import sincos_2d

MODEL = "timm VisionTransformer"


def encoder_to_timm(params: Mapping, patch_size: int, grid_hw, pos_embedding: str = "sincos",
                    head: Optional[Mapping] = None) -> dict:
  """{timm key: float32 array} of `ViTEncoder` params (the default unscanned layout) at
  `grid_hw`; `head`: optional {'kernel' [D, classes], 'bias'} written as head.*.
  A mask token is dropped (timm's ViT has none)."""
  if pos_embedding != "sincos":
    raise ValueError(f"pos_embedding={pos_embedding!r}: timm's VisionTransformer has no "
                     "shared relative position bias; only 'sincos' encoders export.")
  width = params["cls_token"].shape[-1]
  sd = {"cls_token": common.f32(params["cls_token"]),
        "pos_embed": common.f32(np.concatenate([np.zeros((1, width)),
                                                sincos_2d(width, grid_hw)])[None]),
        "patch_embed.proj.weight": common.dense_to_conv_kernel(params["patch_embed"]["kernel"],
                                                               patch_size),
        "patch_embed.proj.bias": common.f32(params["patch_embed"]["bias"])}

  def put_linear(name, p):
    sd[f"{name}.weight"] = common.f32(np.asarray(p["kernel"]).T)
    sd[f"{name}.bias"] = common.f32(p["bias"])

  def put_norm(name, p):
    sd[f"{name}.weight"] = common.f32(p["scale"])
    sd[f"{name}.bias"] = common.f32(p["bias"])

  depth = sum(1 for k in params if k.startswith("blocks_"))
  if depth == 0 or any(f"blocks_{i}" not in params for i in range(depth)):
    raise ValueError(f"Expected encoder params blocks_0..blocks_{{depth-1}} (the unscanned "
                     f"layout); got {sorted(params)}.")
  for i in range(depth):
    blk, b = params[f"blocks_{i}"], f"blocks.{i}"
    put_norm(f"{b}.norm1", blk["norm1"])
    put_linear(f"{b}.attn.qkv", blk["attn"]["qkv"])
    put_linear(f"{b}.attn.proj", blk["attn"]["proj"])
    put_norm(f"{b}.norm2", blk["norm2"])
    put_linear(f"{b}.mlp.fc1", blk["mlp"]["fc1"])
    put_linear(f"{b}.mlp.fc2", blk["mlp"]["fc2"])
    if "gamma_1" in blk:
      sd[f"{b}.ls1.gamma"] = common.f32(blk["gamma_1"])
      sd[f"{b}.ls2.gamma"] = common.f32(blk["gamma_2"])
  put_norm("norm", params["norm"])
  if head is not None:
    put_linear("head", head)
  return sd


def timm_dims(state_dict: Mapping[str, np.ndarray], num_heads: Optional[int] = None,
              image_size: Optional[int] = None) -> dict:
  """Sizes of the timm ViT in `state_dict` at `image_size` (default: its pos_embed grid),
  as `common.encoder_kwargs` reads them; `checkpoint_grid_hw` is the pos_embed grid."""
  dims = common.patch_dims(state_dict)
  width, p = dims["width"], dims["patch_size"]
  dims["checkpoint_grid_hw"] = dims["grid_hw"]
  if image_size is not None:
    if image_size % p:
      raise ValueError(f"image_size={image_size} is not a multiple of the patch size {p}.")
    dims.update(image_size=image_size, grid_hw=(image_size // p,) * 2)
  dims.update(depth=common.depth_of(state_dict, "blocks"),
              mlp_ratio=common.mlp_ratio_of(state_dict, "blocks", width),
              num_heads=common.heads_for(width, num_heads),
              layer_scale_init=0.1 if "blocks.0.ls1.gamma" in state_dict else None,
              pos_embedding="sincos", use_mask_token=False)
  return dims


def encoder_from_timm(state_dict: Mapping[str, np.ndarray], num_heads: Optional[int] = None,
                      image_size: Optional[int] = None) -> Tuple[dict, Optional[dict]]:
  """(ViTEncoder params, head {'kernel', 'bias'} or None) from a timm ViT state dict;
  the inverse of `encoder_to_timm` (exact). Missing, unexpected or misshapen keys, or a
  pos_embed other than the fixed sin-cos one, raise a ValueError naming them."""
  dims = timm_dims(state_dict, num_heads, image_size)
  shapes = common.encoder_shapes(
      {**dims, "grid_hw": dims["checkpoint_grid_hw"]}, "fused",
      "ls" if dims["layer_scale_init"] else None)
  if "head.weight" in state_dict:
    shapes.update(common.linear_shapes("head", state_dict["head.weight"].shape[0],
                                       dims["width"]))
  common.check_keys(state_dict, shapes, lambda k: False, MODEL)
  common.check_sincos(state_dict, "pos_embed", dims["checkpoint_grid_hw"])
  params = common.encoder_params(state_dict, dims["depth"], "fused",
                                 "ls" if dims["layer_scale_init"] else None)
  head = common.linear(state_dict, "head") if "head.weight" in state_dict else None
  return params, head
