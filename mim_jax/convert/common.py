"""Pieces shared by the converters: reading state dicts, key/shape checks, and the
timm-style ViT layout (patch embedding, blocks, norms) <-> our `ViTEncoder` params.

torch Linear weights are [out, in] (Flax kernels are [in, out]); LayerNorm `weight` is
Flax's `scale`; the Conv2d patch embedding [D, C, p, p] is our Dense over patchify's
(p, p, C) vectors. Block variants by official code:
  qkv bias 'fused': attn.qkv.bias [3D] (timm, MAE);
           'qv':    attn.q_bias, attn.v_bias [D] with a zero key bias (BEiT, SimMIM, CAE);
           'none':  no qkv bias (BEiT-style qkv_bias=False; our bias is then zero);
  LayerScale 'ls':    ls1.gamma, ls2.gamma (timm);
             'gamma': gamma_1, gamma_2 (BEiT, SimMIM, CAE); None: no LayerScale.
"""
import argparse
import logging
import math
import os
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from mim_jax.models.vit import sincos_2d

log = logging.getLogger(__name__)

POS_EMBED_TOL = 1e-5
# A state dict does not store head counts; these are the published ViT-Ti/S/B/L/H and
# MAE decoder values, used when the caller gives none.
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
DEFAULT_DECODER_HEADS = {512: 16}
LAYER_SCALE_KEYS = {"ls": ("ls1.gamma", "ls2.gamma"), "gamma": ("gamma_1", "gamma_2")}


def load_torch_state_dict(path) -> Dict[str, np.ndarray]:
  """Read a state dict as {key: array}; floating tensors become float32.

  `.npz`: one array per key; `.safetensors`: read with the `safetensors` package (no
  torch needed). Anything else is read with `torch.load(weights_only=True)`; a
  checkpoint holding the state dict under 'model' or 'module' (the published MAE, CAE
  and SimMIM checkpoints, mae/util/misc.py `save_model`) is unwrapped.
  """
  path = os.fspath(path)
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: _float32(f[k]) for k in f.files}
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return {k: _float32(v) for k, v in load_file(path).items()}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Reading the PyTorch checkpoint {path} needs torch: `pip install torch` "
                      "(the CPU wheel is enough), or pass a .npz or .safetensors of its state "
                      "dict.") from e
  # Training checkpoints (mae/util/misc.py `save_model`) also pickle the argparse Namespace.
  with torch.serialization.safe_globals([argparse.Namespace]):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("model", "module"):
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get(key), Mapping):
      ckpt = ckpt[key]
      break
  out = {}
  for k, v in ckpt.items():
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                       "expected a state dict (or a dict holding one under 'model').")
    v = v.detach().cpu()
    out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def save_state_dict(state_dict: Mapping[str, np.ndarray], path) -> None:
  """Write {key: array} as `.safetensors` (safetensors package) or, for any other
  suffix (`.pth`, `.pt`, `.bin`), with `torch.save` as a dict of tensors."""
  path = os.fspath(path)
  arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file
    save_file(arrays, path)
    return
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Writing {path} with torch.save needs torch: `pip install torch`, or "
                      "name the output *.safetensors.") from e
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, path)


def _float32(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
  """The entries under `prefix` (e.g. 'encoder.') without it, when any key has it; the
  state dict unchanged otherwise (an already stripped encoder)."""
  if not any(k.startswith(prefix) for k in state_dict):
    return dict(state_dict)
  return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def depth_of(state_dict, prefix: str) -> int:
  """1 + the largest i of '{prefix}.{i}.*' keys (gaps then show up as missing keys)."""
  ids = [int(k.split(".")[len(prefix.split("."))]) for k in state_dict
         if k.startswith(prefix + ".") and k.split(".")[len(prefix.split("."))].isdigit()]
  return max(ids) + 1 if ids else 0


def require(state_dict, keys, what: str):
  missing = [k for k in keys if k not in state_dict]
  if missing:
    raise ValueError(f"Cannot {what}: missing keys {missing}.")


def patch_dims(state_dict, pos_key: Optional[str] = "pos_embed") -> dict:
  """patch_size, in_chans, width and (from `pos_key` [1, 1 + N, D]) grid_hw/image_size."""
  require(state_dict, ("patch_embed.proj.weight",), "infer the model size")
  width, in_chans, p, p_w = state_dict["patch_embed.proj.weight"].shape
  if p != p_w:
    raise ValueError(f"Non-square patches {p}x{p_w} are not supported.")
  dims = dict(patch_size=int(p), in_chans=int(in_chans), width=int(width))
  if pos_key is not None:
    require(state_dict, (pos_key,), "infer the image size")
    n = state_dict[pos_key].shape[-2] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
      raise ValueError(f"{pos_key} has {n} patch positions, not a square grid.")
    dims.update(grid_hw=(grid, grid), image_size=int(grid * p))
  return dims


def mlp_ratio_of(state_dict, prefix: str, width: int) -> float:
  fc1 = [k for k in state_dict if k.startswith(prefix + ".") and k.endswith(".mlp.fc1.weight")]
  if not fc1:
    raise ValueError(f"Cannot infer the MLP width: no {prefix}.{{i}}.mlp.fc1.weight keys.")
  return state_dict[fc1[0]].shape[0] / width


def heads_for(width: int, num_heads: Optional[int], flag: str = "num_heads") -> int:
  """`num_heads`, or the published count for a standard width."""
  if num_heads is not None:
    if width % num_heads:
      raise ValueError(f"{flag}={num_heads} does not divide the width {width}.")
    return num_heads
  if width not in DEFAULT_HEADS:
    raise ValueError(f"A state dict does not store the number of attention heads and width "
                     f"{width} is not a standard ViT width {sorted(DEFAULT_HEADS)}: pass "
                     f"{flag}.")
  return DEFAULT_HEADS[width]


# ---------------------------------------------------------------- expected shapes

def linear_shapes(name: str, d_out: int, d_in: int, bias: bool = True) -> dict:
  shapes = {f"{name}.weight": (d_out, d_in)}
  if bias:
    shapes[f"{name}.bias"] = (d_out,)
  return shapes


def norm_shapes(name: str, d: int) -> dict:
  return {f"{name}.weight": (d,), f"{name}.bias": (d,)}


def blocks_shapes(prefix: str, depth: int, d: int, hidden: int, qkv_bias: str = "fused",
                  layer_scale: Optional[str] = None) -> dict:
  shapes = {}
  for i in range(depth):
    b = f"{prefix}.{i}."
    shapes.update(norm_shapes(b + "norm1", d))
    shapes.update(linear_shapes(b + "attn.qkv", 3 * d, d, bias=qkv_bias == "fused"))
    if qkv_bias == "qv":
      shapes.update({b + "attn.q_bias": (d,), b + "attn.v_bias": (d,)})
    shapes.update(linear_shapes(b + "attn.proj", d, d))
    shapes.update(norm_shapes(b + "norm2", d))
    shapes.update(linear_shapes(b + "mlp.fc1", hidden, d))
    shapes.update(linear_shapes(b + "mlp.fc2", d, hidden))
    if layer_scale is not None:
      shapes.update({b + k: (d,) for k in LAYER_SCALE_KEYS[layer_scale]})
  return shapes


def encoder_shapes(dims: dict, qkv_bias: str = "fused", layer_scale: Optional[str] = None,
                   pos_embed: bool = True) -> dict:
  """patch_embed, cls_token, (pos_embed), blocks, norm of a timm-style ViT."""
  d, p = dims["width"], dims["patch_size"]
  shapes = {"cls_token": (1, 1, d), "patch_embed.proj.weight": (d, dims["in_chans"], p, p),
            "patch_embed.proj.bias": (d,)}
  if pos_embed:
    shapes["pos_embed"] = (1, 1 + dims["grid_hw"][0] * dims["grid_hw"][1], d)
  shapes.update(blocks_shapes("blocks", dims["depth"], d, int(d * dims["mlp_ratio"]),
                              qkv_bias, layer_scale))
  shapes.update(norm_shapes("norm", d))
  return shapes


def check_keys(state_dict, expected: dict, ignorable: Callable[[str], bool], model: str):
  """ValueError naming every missing, unexpected or misshapen key (with the expected
  shape); log the ignored ones."""
  missing = sorted(k for k in expected if k not in state_dict)
  unexpected = sorted(k for k in state_dict if k not in expected and not ignorable(k))
  misshapen = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
               for k in sorted(expected)
               if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
  errors = [f"{what}: {', '.join(keys)}" for what, keys in
            (("missing keys", missing), ("unexpected keys", unexpected),
             ("wrong shapes", misshapen)) if keys]
  if "norm.weight" in missing and "fc_norm.weight" in state_dict:
    errors.append("(a global-pool fine-tuned checkpoint has `fc_norm` instead of `norm`; "
                  "convert the pretraining checkpoint)")
  if errors:
    raise ValueError(f"State dict does not fit the {model}: " + "; ".join(errors))
  ignored = sorted(k for k in state_dict if k not in expected)
  if ignored:
    log.info("Ignoring %d checkpoint keys not used by this model: %s", len(ignored),
             ", ".join(ignored))


def sincos_error(pos_embed: np.ndarray, grid_hw, swap_halves: bool = False) -> float:
  """Max |difference| between [1, 1 + N, D] `pos_embed` and a zero cls row + our
  `sincos_2d` (with its two halves swapped: row index first, as CAE's)."""
  pe = np.asarray(pos_embed, np.float64)[0]
  if pe.shape[-1] % 4:
    return math.inf
  ref = sincos_2d(pe.shape[-1], grid_hw)
  if swap_halves:
    ref = np.roll(ref, pe.shape[-1] // 2, axis=-1)
  return max(float(np.abs(pe[0]).max()), float(np.abs(pe[1:] - ref).max()))


def check_sincos(state_dict, key: str, grid_hw):
  """The checkpoint's embedding must be mae/util/pos_embed.py's with a zero cls row."""
  err = sincos_error(state_dict[key], grid_hw)
  if err > POS_EMBED_TOL:
    raise ValueError(
        f"{key} is not MAE's fixed 2-D sin-cos embedding with a zero cls row (max |diff| "
        f"{err:.2e}, tolerance {POS_EMBED_TOL:g}). Our encoder computes that embedding and "
        "cannot hold a learned or differently laid out one.")


# ---------------------------------------------------------------- torch -> ours

def f32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def linear(sd, name: str) -> dict:
  return {"kernel": f32(np.asarray(sd[f"{name}.weight"]).T), "bias": f32(sd[f"{name}.bias"])}


def norm(sd, name: str) -> dict:
  return {"scale": f32(sd[f"{name}.weight"]), "bias": f32(sd[f"{name}.bias"])}


def conv_to_dense_kernel(w: np.ndarray) -> np.ndarray:
  """Conv2d weight [D, C, p, p] -> Dense kernel [p*p*C, D] over patchify's (i, j, c)."""
  w = np.asarray(w)
  return f32(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def dense_to_conv_kernel(kernel: np.ndarray, patch_size: int) -> np.ndarray:
  """Inverse of `conv_to_dense_kernel`."""
  kernel = np.asarray(kernel)
  d = kernel.shape[-1]
  c = kernel.shape[0] // (patch_size * patch_size)
  return f32(kernel.reshape(patch_size, patch_size, c, d).transpose(3, 2, 0, 1))


def block(sd, prefix: str, qkv_bias: str = "fused", layer_scale: Optional[str] = None) -> dict:
  """A timm/BEiT `Block` -> our `Block` (mim_jax/models/vit.py). BEiT's q_bias/v_bias
  become our fused qkv bias with a zero key bias, as the official forward builds it."""
  if qkv_bias == "fused":
    qkv = linear(sd, f"{prefix}.attn.qkv")
  else:
    kernel = f32(np.asarray(sd[f"{prefix}.attn.qkv.weight"]).T)  # [D, 3D]
    d = kernel.shape[0]
    bias = np.zeros(3 * d, np.float32)
    if qkv_bias == "qv":
      bias[:d], bias[2 * d:] = sd[f"{prefix}.attn.q_bias"], sd[f"{prefix}.attn.v_bias"]
    qkv = {"kernel": kernel, "bias": bias}
  params = {"norm1": norm(sd, f"{prefix}.norm1"),
            "attn": {"qkv": qkv, "proj": linear(sd, f"{prefix}.attn.proj")},
            "norm2": norm(sd, f"{prefix}.norm2"),
            "mlp": {"fc1": linear(sd, f"{prefix}.mlp.fc1"), "fc2": linear(sd, f"{prefix}.mlp.fc2")}}
  if layer_scale is not None:
    k1, k2 = LAYER_SCALE_KEYS[layer_scale]
    params["gamma_1"] = f32(sd[f"{prefix}.{k1}"])
    params["gamma_2"] = f32(sd[f"{prefix}.{k2}"])
  return params


def encoder_params(sd, depth: int, qkv_bias: str = "fused",
                   layer_scale: Optional[str] = None) -> dict:
  """patch_embed, cls_token, blocks_i, norm of `ViTEncoder` from a timm-style layout."""
  params = {"patch_embed": {"kernel": conv_to_dense_kernel(sd["patch_embed.proj.weight"]),
                            "bias": f32(sd["patch_embed.proj.bias"])},
            "cls_token": f32(sd["cls_token"]), "norm": norm(sd, "norm")}
  for i in range(depth):
    params[f"blocks_{i}"] = block(sd, f"blocks.{i}", qkv_bias, layer_scale)
  return params


def encoder_kwargs(dims: dict) -> dict:
  """`ViTEncoder` fields for a dims dict of these converters."""
  return dict(image_size=dims["image_size"], patch_size=dims["patch_size"],
              width=dims["width"], depth=dims["depth"], num_heads=dims["num_heads"],
              mlp_ratio=dims["mlp_ratio"], layer_scale_init=dims.get("layer_scale_init"),
              pos_embedding=dims.get("pos_embedding", "sincos"),
              use_mask_token=dims.get("use_mask_token", False))
