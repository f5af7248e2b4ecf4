"""facebookresearch/mae PyTorch checkpoints -> Flax params of `ViTEncoder` and `MAEDecoder`.

Key names and shapes are those of mae/models_mae.py `MaskedAutoencoderViT`, built from
timm 0.3.2 `PatchEmbed` and `Block` (timm/models/vision_transformer.py):
  cls_token [1, 1, D], pos_embed [1, 1 + N, D], patch_embed.proj.{weight [D, C, p, p], bias},
  blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}, norm.*;
  decoder: mask_token [1, 1, Dd], decoder_embed.*, decoder_pos_embed [1, 1 + N, Dd],
  decoder_blocks.{i}.*, decoder_norm.*, decoder_pred.*.
torch Linear weights are [out, in] (Flax kernels are [in, out]) and LayerNorm `weight` is
Flax's `scale`. Position embeddings are not parameters of our modules: they are checked
against `sincos_2d` and dropped.

Usage:
  sd = load_torch_state_dict("mae_pretrain_vit_base.pth")
  dims = vit_dims_from_torch(sd)
  encoder = ViTEncoder(image_size=dims["image_size"], patch_size=dims["patch_size"],
                       width=dims["width"], depth=dims["depth"], num_heads=dims["num_heads"],
                       mlp_ratio=dims["mlp_ratio"])
  encoder.apply({"params": mae_encoder_from_torch(sd)}, images, visible_idx)
"""
import argparse
import logging
import math
import os
from typing import Callable, Dict, Mapping

import numpy as np

from mim_jax.models.vit import sincos_2d

log = logging.getLogger(__name__)

POS_EMBED_TOL = 1e-5
# Classifier keys of fine-tuned checkpoints (mae/models_vit.py); not part of pretraining.
FINETUNE_PREFIXES = ("head.", "fc_norm.")
# A state dict does not store head counts; these are the published ViT-Ti/S/B/L/H and
# MAE decoder values, used as defaults by `vit_dims_from_torch`.
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
DEFAULT_DECODER_HEADS = {512: 16}


def load_torch_state_dict(path) -> Dict[str, np.ndarray]:
  """Read a state dict as {key: array}; floating tensors become float32.

  A `.npz` holds one array per key. Anything else is read with
  `torch.load(weights_only=True)`; a checkpoint holding the state dict under 'model'
  (the published MAE checkpoints, mae/util/misc.py `save_model`) is unwrapped.
  """
  path = os.fspath(path)
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Reading the PyTorch checkpoint {path} needs torch: `pip install torch` "
                      "(the CPU wheel is enough), or pass a .npz of its state dict.") from e
  # Training checkpoints (mae/util/misc.py `save_model`) also pickle the argparse Namespace.
  with torch.serialization.safe_globals([argparse.Namespace]):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
    ckpt = ckpt["model"]
  out = {}
  for k, v in ckpt.items():
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                       "expected a state dict (or a dict holding one under 'model').")
    v = v.detach().cpu()
    out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def _is_decoder_key(key: str) -> bool:
  return key == "mask_token" or key.startswith("decoder_")


def _depth(state_dict, prefix: str) -> int:
  """1 + the largest i of '{prefix}.{i}.*' keys (gaps then show up as missing keys)."""
  ids = [int(k.split(".")[1]) for k in state_dict
         if k.startswith(prefix + ".") and k.split(".")[1].isdigit()]
  return max(ids) + 1 if ids else 0


def _require(state_dict, keys, what: str):
  missing = [k for k in keys if k not in state_dict]
  if missing:
    raise ValueError(f"Cannot {what}: missing keys {missing}.")


def vit_dims_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Model sizes read off the shapes of an MAE state dict.

  Returns patch_size, in_chans, image_size, grid_hw, width, depth, mlp_ratio, num_heads,
  decoder_width, decoder_depth, decoder_num_heads, decoder_out_dim (the decoder entries
  are None for encoder-only checkpoints). Head counts are not stored in a state dict:
  num_heads / decoder_num_heads are the published defaults for the width (DEFAULT_HEADS,
  DEFAULT_DECODER_HEADS), None for other widths; the caller passes the true counts
  when building the modules.
  """
  _require(state_dict, ("patch_embed.proj.weight", "pos_embed"), "infer the model size")
  width, in_chans, p, p_w = state_dict["patch_embed.proj.weight"].shape
  if p != p_w:
    raise ValueError(f"Non-square patches {p}x{p_w} are not supported.")
  n = state_dict["pos_embed"].shape[-2] - 1
  grid = math.isqrt(n)
  if grid * grid != n:
    raise ValueError(f"pos_embed has {n} patch positions, not a square grid.")
  depth = _depth(state_dict, "blocks")
  fc1 = [k for k in state_dict if k.startswith("blocks.") and k.endswith(".mlp.fc1.weight")]
  if not fc1:
    raise ValueError("Cannot infer the MLP width: no blocks.{i}.mlp.fc1.weight keys.")
  dims = dict(patch_size=int(p), in_chans=int(in_chans), image_size=int(grid * p),
              grid_hw=(grid, grid), width=int(width), depth=depth,
              mlp_ratio=state_dict[fc1[0]].shape[0] / width,
              num_heads=DEFAULT_HEADS.get(int(width)), decoder_width=None, decoder_depth=None,
              decoder_num_heads=None, decoder_out_dim=None)
  if any(_is_decoder_key(k) for k in state_dict):
    _require(state_dict, ("decoder_embed.weight",), "infer the decoder width")
    decoder_width = int(state_dict["decoder_embed.weight"].shape[0])
    dims.update(decoder_width=decoder_width, decoder_depth=_depth(state_dict, "decoder_blocks"),
                decoder_num_heads=DEFAULT_DECODER_HEADS.get(decoder_width),
                decoder_out_dim=int(p * p * in_chans))
  return dims


def _linear_shapes(name: str, d_out: int, d_in: int) -> dict:
  return {f"{name}.weight": (d_out, d_in), f"{name}.bias": (d_out,)}


def _norm_shapes(name: str, d: int) -> dict:
  return {f"{name}.weight": (d,), f"{name}.bias": (d,)}


def _blocks_shapes(prefix: str, depth: int, d: int, hidden: int) -> dict:
  shapes = {}
  for i in range(depth):
    b = f"{prefix}.{i}."
    shapes.update(_norm_shapes(b + "norm1", d))
    shapes.update(_linear_shapes(b + "attn.qkv", 3 * d, d))
    shapes.update(_linear_shapes(b + "attn.proj", d, d))
    shapes.update(_norm_shapes(b + "norm2", d))
    shapes.update(_linear_shapes(b + "mlp.fc1", hidden, d))
    shapes.update(_linear_shapes(b + "mlp.fc2", d, hidden))
  return shapes


def _encoder_shapes(dims: dict) -> dict:
  d, p, n = dims["width"], dims["patch_size"], dims["grid_hw"][0] * dims["grid_hw"][1]
  shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + n, d),
            "patch_embed.proj.weight": (d, dims["in_chans"], p, p),
            "patch_embed.proj.bias": (d,)}
  shapes.update(_blocks_shapes("blocks", dims["depth"], d, int(d * dims["mlp_ratio"])))
  shapes.update(_norm_shapes("norm", d))
  return shapes


def _decoder_shapes(dims: dict) -> dict:
  dd, n = dims["decoder_width"], dims["grid_hw"][0] * dims["grid_hw"][1]
  shapes = {"mask_token": (1, 1, dd), "decoder_pos_embed": (1, 1 + n, dd)}
  shapes.update(_linear_shapes("decoder_embed", dd, dims["width"]))
  shapes.update(_blocks_shapes("decoder_blocks", dims["decoder_depth"], dd,
                               int(dd * dims["mlp_ratio"])))
  shapes.update(_norm_shapes("decoder_norm", dd))
  shapes.update(_linear_shapes("decoder_pred", dims["decoder_out_dim"], dd))
  return shapes


def _check_keys(state_dict, expected: dict, ignorable: Callable[[str], bool]):
  """ValueError on missing, unexpected or misshapen keys; log the ignored ones."""
  missing = sorted(k for k in expected if k not in state_dict)
  unexpected = sorted(k for k in state_dict if k not in expected and not ignorable(k))
  misshapen = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
               for k in sorted(expected)
               if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
  errors = [f"{what}: {', '.join(keys)}" for what, keys in
            (("missing keys", missing), ("unexpected keys", unexpected),
             ("wrong shapes", misshapen)) if keys]
  if "norm.weight" in missing and "fc_norm.weight" in state_dict:
    errors.append("(a global-pool fine-tuned checkpoint, mae/models_vit.py, has no `norm`)")
  if errors:
    raise ValueError("State dict does not fit the MAE model: " + "; ".join(errors))
  ignored = sorted(k for k in state_dict if k not in expected)
  if ignored:
    log.info("Ignoring %d checkpoint keys not used by this model: %s", len(ignored),
             ", ".join(ignored))


def _check_pos_embed(state_dict, key: str, grid_hw):
  """The checkpoint's embedding must be mae/util/pos_embed.py's with a zero cls row."""
  pe = np.asarray(state_dict[key], np.float64)[0]  # [1 + N, D]
  if pe.shape[-1] % 4:
    raise ValueError(f"{key} width {pe.shape[-1]} is not a multiple of 4; no 2-D sin-cos "
                     "embedding of that width exists.")
  cls_err = float(np.abs(pe[0]).max())
  grid_err = float(np.abs(pe[1:] - sincos_2d(pe.shape[-1], grid_hw)).max())
  if cls_err > POS_EMBED_TOL or grid_err > POS_EMBED_TOL:
    raise ValueError(
        f"{key} is not MAE's fixed 2-D sin-cos embedding with a zero cls row "
        f"(max |cls row| {cls_err:.2e}, max |diff| to sincos_2d {grid_err:.2e}, tolerance "
        f"{POS_EMBED_TOL:g}). Our modules compute that embedding and cannot hold a learned "
        "or differently laid out one.")


def _f32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def _linear(sd, name: str) -> dict:
  return {"kernel": _f32(np.asarray(sd[f"{name}.weight"]).T), "bias": _f32(sd[f"{name}.bias"])}


def _norm(sd, name: str) -> dict:
  return {"scale": _f32(sd[f"{name}.weight"]), "bias": _f32(sd[f"{name}.bias"])}


def _block(sd, prefix: str) -> dict:
  """timm `Block` -> our `Block` (mim_jax/models/vit.py)."""
  return {"norm1": _norm(sd, f"{prefix}.norm1"),
          "attn": {"qkv": _linear(sd, f"{prefix}.attn.qkv"),
                   "proj": _linear(sd, f"{prefix}.attn.proj")},
          "norm2": _norm(sd, f"{prefix}.norm2"),
          "mlp": {"fc1": _linear(sd, f"{prefix}.mlp.fc1"), "fc2": _linear(sd, f"{prefix}.mlp.fc2")}}


def _encoder_params(sd, dims: dict) -> dict:
  w = np.asarray(sd["patch_embed.proj.weight"])  # [D, C, p, p]
  # Conv over (c, i, j) == Dense over patchify's (i, j, c) vectors.
  kernel = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])  # [p*p*C, D]
  params = {"patch_embed": {"kernel": _f32(kernel), "bias": _f32(sd["patch_embed.proj.bias"])},
            "cls_token": _f32(sd["cls_token"]), "norm": _norm(sd, "norm")}
  for i in range(dims["depth"]):
    params[f"blocks_{i}"] = _block(sd, f"blocks.{i}")
  return params


def _decoder_params(sd, dims: dict) -> dict:
  params = {"decoder_embed": _linear(sd, "decoder_embed"), "mask_token": _f32(sd["mask_token"]),
            "decoder_norm": _norm(sd, "decoder_norm"), "decoder_pred": _linear(sd, "decoder_pred")}
  for i in range(dims["decoder_depth"]):
    params[f"decoder_blocks_{i}"] = _block(sd, f"decoder_blocks.{i}")
  return params


def mae_encoder_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """`ViTEncoder` params (NumPy float32) from an MAE state dict, with or without decoder.

  Decoder keys and fine-tuning heads (`head.*`, `fc_norm.*`) are ignored with a log note;
  any other missing, unexpected or misshapen key, or a pos_embed other than the fixed
  sin-cos one, is a ValueError.
  """
  dims = vit_dims_from_torch(state_dict)
  _check_keys(state_dict, _encoder_shapes(dims),
              lambda k: k.startswith(FINETUNE_PREFIXES) or _is_decoder_key(k))
  _check_pos_embed(state_dict, "pos_embed", dims["grid_hw"])
  return _encoder_params(state_dict, dims)


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
  _check_keys(state_dict, {**_encoder_shapes(dims), **_decoder_shapes(dims)},
              lambda k: k.startswith(FINETUNE_PREFIXES))
  _check_pos_embed(state_dict, "pos_embed", dims["grid_hw"])
  _check_pos_embed(state_dict, "decoder_pos_embed", dims["grid_hw"])
  return {"encoder": _encoder_params(state_dict, dims),
          "decoder": _decoder_params(state_dict, dims)}
