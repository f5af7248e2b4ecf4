"""The converter tests' references (not a test file; tests/convert/ is on sys.path when
pytest imports its test files): random state dicts in the official key layouts, an
independent NumPy forward of their ViT blocks (timm 0.3.2 `Block` as MAE uses it, BEiT's as
CAE and SimMIM do), and a torch ViT with the official module names. The CAE and SimMIM
references use the sizes below; MAE's test file has its own (a decoder too)."""
import math

import jax
import numpy as np
import pytest

from mim_jax.convert import cae_channel_permutation, cae_dims_from_torch, cae_encoder_from_torch
from mim_jax.convert import encoder_kwargs
from mim_jax.models.vit import ViTEncoder

IMAGE, PATCH, CHANS, WIDTH, DEPTH, HEADS, MLP = 32, 8, 3, 32, 2, 4, 4
GRID = IMAGE // PATCH
N = GRID * GRID
BATCH = 2
TOL = 1e-4


# ---------------------------------------------------------------- official-layout pieces

def _add_linear(sd, rng, name, d_out, d_in):
  sd[f"{name}.weight"] = rng.normal(0, 1 / math.sqrt(d_in), (d_out, d_in))
  sd[f"{name}.bias"] = rng.normal(0, 0.1, (d_out,))


def _add_norm(sd, rng, name, d):
  sd[f"{name}.weight"] = 1 + rng.normal(0, 0.2, (d,))
  sd[f"{name}.bias"] = rng.normal(0, 0.2, (d,))


# ---------------------------------------------------------------- independent NumPy forward

_erf = np.vectorize(math.erf)


def np_layer_norm(x, sd, name):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def np_linear(x, sd, name):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def np_attention(x, sd, name, heads, rel_bias=None):
  """timm Attention; BEiT's (q_bias, zero, v_bias) when the qkv has no bias; `rel_bias`
  [H, N, N] added to the logits."""
  b, n, c = x.shape
  qkv_bias = sd.get(f"{name}.qkv.bias")
  if qkv_bias is None:
    zero = np.zeros(c)
    qkv_bias = (np.concatenate([sd[f"{name}.q_bias"], zero, sd[f"{name}.v_bias"]])
                if f"{name}.q_bias" in sd else np.zeros(3 * c))
  qkv = (x @ sd[f"{name}.qkv.weight"].T + qkv_bias).reshape(b, n, 3, heads, c // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each [B, H, N, Dh]
  logits = q @ k.swapaxes(-1, -2) * (c // heads) ** -0.5
  if rel_bias is not None:
    logits = logits + rel_bias
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  return np_linear((attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c), sd, f"{name}.proj")


def np_block(x, sd, name, heads, rel_bias=None):
  """Pre-LN block with LayerScale as BEiT's gamma_1/gamma_2 or timm's ls1/ls2 when present."""
  g1 = sd.get(f"{name}.gamma_1", sd.get(f"{name}.ls1.gamma", 1.0))
  g2 = sd.get(f"{name}.gamma_2", sd.get(f"{name}.ls2.gamma", 1.0))
  x = x + g1 * np_attention(np_layer_norm(x, sd, f"{name}.norm1"), sd, f"{name}.attn", heads,
                            rel_bias)
  y = np_linear(np_layer_norm(x, sd, f"{name}.norm2"), sd, f"{name}.mlp.fc1")
  y = 0.5 * y * (1 + _erf(y / math.sqrt(2)))
  return x + g2 * np_linear(y, sd, f"{name}.mlp.fc2")


def np_patch_embed(sd, imgs_nchw, patch):
  b, c, h, w = imgs_nchw.shape
  x = imgs_nchw.reshape(b, c, h // patch, patch, w // patch, patch)
  x = np.einsum("bchpwq,dcpq->bhwd", x, sd["patch_embed.proj.weight"])
  return x.reshape(b, (h // patch) * (w // patch), -1) + sd["patch_embed.proj.bias"]


def max_diff(a, b):
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def tree_equal(a, b):
  return (jax.tree.structure(a) == jax.tree.structure(b) and
          all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b))))


# ---------------------------------------------------------------- CAE and SimMIM

def cae_sincos(dim, grid):
  """modeling_cae_helper.py `build_2d_sincos_position_embedding`: torch.meshgrid(grid_w,
  grid_h) ('ij') so the first flattened coordinate is the row; [sin, cos] of it, then of
  the column; zero cls row."""
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64),
                           np.arange(grid, dtype=np.float64), indexing="ij")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4) / (dim // 4))
  out_r, out_c = rows.reshape(-1)[:, None] * omega, cols.reshape(-1)[:, None] * omega
  emb = np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1)
  return np.concatenate([np.zeros((1, dim)), emb])[None]


def beit_relative_position_index(grid):
  """SimMIM models/vision_transformer.py `RelativePositionBias` index, written out."""
  coords = [(i, j) for i in range(grid) for j in range(grid)]
  size = (2 * grid - 1) ** 2 + 3
  index = np.zeros((N + 1, N + 1), np.int64)
  for a, (ia, ja) in enumerate(coords):
    for b, (ib, jb) in enumerate(coords):
      index[a + 1, b + 1] = (ia - ib + grid - 1) * (2 * grid - 1) + (ja - jb + grid - 1)
  index[0, :], index[:, 0], index[0, 0] = size - 3, size - 2, size - 1
  return index


def beit_blocks(sd, rng, prefix, layer_scale=True, qkv_bias=True):
  for i in range(DEPTH):
    b = f"{prefix}blocks.{i}."
    _add_norm(sd, rng, b + "norm1", WIDTH)
    sd[b + "attn.qkv.weight"] = rng.normal(0, 1 / math.sqrt(WIDTH), (3 * WIDTH, WIDTH))
    if qkv_bias:
      sd[b + "attn.q_bias"] = rng.normal(0, 0.3, (WIDTH,))
      sd[b + "attn.v_bias"] = rng.normal(0, 0.3, (WIDTH,))
    _add_linear(sd, rng, b + "attn.proj", WIDTH, WIDTH)
    _add_norm(sd, rng, b + "norm2", WIDTH)
    _add_linear(sd, rng, b + "mlp.fc1", MLP * WIDTH, WIDTH)
    _add_linear(sd, rng, b + "mlp.fc2", WIDTH, MLP * WIDTH)
    if layer_scale:
      sd[b + "gamma_1"] = rng.uniform(0.3, 1.5, (WIDTH,))
      sd[b + "gamma_2"] = rng.uniform(0.3, 1.5, (WIDTH,))


def common_keys(sd, rng, prefix):
  sd[prefix + "cls_token"] = rng.normal(0, 0.5, (1, 1, WIDTH))
  sd[prefix + "patch_embed.proj.weight"] = rng.normal(0, 1 / PATCH, (WIDTH, CHANS, PATCH, PATCH))
  sd[prefix + "patch_embed.proj.bias"] = rng.normal(0, 0.1, (WIDTH,))
  _add_norm(sd, rng, prefix + "norm", WIDTH)


def cae_state_dict(seed=0, layer_scale=True):
  """A `ContextAutoencoderViT` pretraining state dict: the encoder under `encoder.` with
  the other branches' keys beside it."""
  rng = np.random.default_rng(seed)
  sd = {"encoder.pos_embed": cae_sincos(WIDTH, GRID)}
  common_keys(sd, rng, "encoder.")
  beit_blocks(sd, rng, "encoder.", layer_scale)
  sd["alignment_encoder.cls_token"] = sd["encoder.cls_token"]
  sd["mask_token"] = rng.normal(size=(1, 1, WIDTH))
  sd["rd_pos_embed"] = cae_sincos(WIDTH, GRID)
  _add_linear(sd, rng, "regresser.regressor_blocks.0.cross_attn.proj", WIDTH, WIDTH)
  _add_linear(sd, rng, "decoder.decoder_blocks.0.attn.proj", WIDTH, WIDTH)
  _add_linear(sd, rng, "decoder.head", 64, WIDTH)
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def simmim_state_dict(seed=0, qkv_bias=True):
  """A `SimMIM(VisionTransformerForSimMIM)` pretraining state dict (published ViT
  options: shared relative position bias, LayerScale, q/v biases) with its head."""
  rng = np.random.default_rng(seed)
  sd = {"encoder.mask_token": rng.normal(0, 0.5, (1, 1, WIDTH)),
        "encoder.rel_pos_bias.relative_position_bias_table":
            rng.normal(0, 0.5, ((2 * GRID - 1) ** 2 + 3, HEADS)),
        "decoder.0.weight": rng.normal(0, 0.2, (PATCH * PATCH * CHANS, WIDTH, 1, 1)),
        "decoder.0.bias": rng.normal(0, 0.1, (PATCH * PATCH * CHANS,))}
  common_keys(sd, rng, "encoder.")
  beit_blocks(sd, rng, "encoder.", qkv_bias=qkv_bias)
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  sd["encoder.rel_pos_bias.relative_position_index"] = beit_relative_position_index(GRID)
  return sd


def np_cae_encoder(sd, imgs_nchw, bool_masked_pos):
  """`VisionTransformerEncoder.forward_features`: visible patches in position order."""
  sd = {k[len("encoder."):]: v.astype(np.float64) for k, v in sd.items()
        if k.startswith("encoder.")}
  x = np_patch_embed(sd, imgs_nchw, PATCH)
  b = x.shape[0]
  pos = np.broadcast_to(sd["pos_embed"], (b, N + 1, WIDTH))
  vis = [np.concatenate([sd["cls_token"][0], x[i][~bool_masked_pos[i]]]) for i in range(b)]
  vis_pos = [np.concatenate([pos[i, :1], pos[i, 1:][~bool_masked_pos[i]]]) for i in range(b)]
  x = np.stack(vis) + np.stack(vis_pos)
  for i in range(DEPTH):
    x = np_block(x, sd, f"blocks.{i}", HEADS)
  return np_layer_norm(x, sd, "norm")


def np_simmim(sd, imgs_nchw, mask):
  """`VisionTransformerForSimMIM.forward` + the 1x1 conv and PixelShuffle head: the encoder
  output [B, 1 + N, D] and the reconstruction [B, C, H, W]."""
  enc = {k[len("encoder."):]: (v.astype(np.float64) if v.dtype == np.float32 else v)
         for k, v in sd.items() if k.startswith("encoder.")}
  x = np_patch_embed(enc, imgs_nchw, PATCH)
  w = mask.reshape(mask.shape[0], -1, 1).astype(np.float64)
  x = x * (1 - w) + enc["mask_token"] * w
  x = np.concatenate([np.broadcast_to(enc["cls_token"], (x.shape[0], 1, WIDTH)), x], axis=1)
  table = enc["rel_pos_bias.relative_position_bias_table"]
  bias = table[enc["rel_pos_bias.relative_position_index"].reshape(-1)]
  bias = bias.reshape(N + 1, N + 1, -1).transpose(2, 0, 1)
  for i in range(DEPTH):
    x = np_block(x, enc, f"blocks.{i}", HEADS, bias)
  z = np_layer_norm(x, enc, "norm")
  y = z[:, 1:] @ sd["decoder.0.weight"][:, :, 0, 0].T.astype(np.float64) + sd["decoder.0.bias"]
  y = y.reshape(-1, GRID, GRID, CHANS, PATCH, PATCH)  # PixelShuffle: channel = (c, i, j)
  return z, y.transpose(0, 3, 1, 4, 2, 5).reshape(-1, CHANS, IMAGE, IMAGE)


def inputs(seed=1, hidden=9):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, IMAGE, IMAGE, CHANS)).astype(np.float32)
  mask = np.zeros((BATCH, N), bool)
  for i in range(BATCH):
    mask[i, rng.permutation(N)[:hidden]] = True
  return images, mask


def run_cae(sd, images, mask):
  dims = cae_dims_from_torch(sd, num_heads=HEADS)
  encoder = ViTEncoder(**encoder_kwargs(dims))
  visible_idx = np.stack([np.flatnonzero(~m) for m in mask])
  out = jax.jit(encoder.apply)({"params": cae_encoder_from_torch(sd, HEADS)}, images,
                               visible_idx)
  return np.asarray(out)[..., cae_channel_permutation(WIDTH)]


# ---------------------------------------------------------------- torch

def torch_vit_class():
  """A torch ViT with the official module names: BEiT attention (q_bias/v_bias, no key
  bias) or timm's (qkv.bias); gamma_1/gamma_2 or ls1/ls2.gamma; optional pos_embed,
  mask token, shared relative position bias."""
  torch = pytest.importorskip("torch")
  nn, F = torch.nn, torch.nn.functional

  class Attention(nn.Module):
    def __init__(self, beit):
      super().__init__()
      self.beit = beit
      self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=not beit)
      if beit:
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(WIDTH)), nn.Parameter(
            torch.zeros(WIDTH))
      self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x, rel_pos_bias=None):
      b, n, c = x.shape
      bias = (torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
              if self.beit else self.qkv.bias)
      qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
      attn = qkv[0] * (c // HEADS) ** -0.5 @ qkv[1].transpose(-2, -1)
      if rel_pos_bias is not None:
        attn = attn + rel_pos_bias
      return self.proj((attn.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, n, c))

  class LayerScale(nn.Module):
    def __init__(self):
      super().__init__()
      self.gamma = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x):
      return x * self.gamma

  class Mlp(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc1, self.fc2 = nn.Linear(WIDTH, MLP * WIDTH), nn.Linear(MLP * WIDTH, WIDTH)

    def forward(self, x):
      return self.fc2(F.gelu(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self, beit):
      super().__init__()
      self.beit = beit
      self.norm1, self.attn = nn.LayerNorm(WIDTH, eps=1e-6), Attention(beit)
      self.norm2, self.mlp = nn.LayerNorm(WIDTH, eps=1e-6), Mlp()
      if beit:
        self.gamma_1, self.gamma_2 = nn.Parameter(torch.ones(WIDTH)), nn.Parameter(
            torch.ones(WIDTH))
      else:
        self.ls1, self.ls2 = LayerScale(), LayerScale()

    def forward(self, x, rel_pos_bias=None):
      g1, g2 = (self.gamma_1, self.gamma_2) if self.beit else (self.ls1.gamma, self.ls2.gamma)
      x = x + g1 * self.attn(self.norm1(x), rel_pos_bias)
      return x + g2 * self.mlp(self.norm2(x))

  class PatchEmbed(nn.Module):
    def __init__(self):
      super().__init__()
      self.proj = nn.Conv2d(CHANS, WIDTH, kernel_size=PATCH, stride=PATCH)

  class RelativePositionBias(nn.Module):
    def __init__(self):
      super().__init__()
      self.relative_position_bias_table = nn.Parameter(
          torch.zeros((2 * GRID - 1) ** 2 + 3, HEADS))
      self.register_buffer("relative_position_index",
                           torch.from_numpy(beit_relative_position_index(GRID)))

    def forward(self):
      bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
      return bias.view(N + 1, N + 1, -1).permute(2, 0, 1)

  class ViT(nn.Module):
    def __init__(self, beit, pos_embed, mask_token, rel_pos_bias):
      super().__init__()
      self.patch_embed = PatchEmbed()
      self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
      self.pos_embed = nn.Parameter(torch.zeros(1, N + 1, WIDTH)) if pos_embed else None
      self.mask_token = nn.Parameter(torch.zeros(1, 1, WIDTH)) if mask_token else None
      self.rel_pos_bias = RelativePositionBias() if rel_pos_bias else None
      self.blocks = nn.ModuleList([Block(beit) for _ in range(DEPTH)])
      self.norm = nn.LayerNorm(WIDTH, eps=1e-6)

    def forward(self, imgs, mask=None):
      x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)
      if mask is not None:
        w = mask.flatten(1).unsqueeze(-1).float()
        x = x * (1 - w) + self.mask_token * w
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
      if self.pos_embed is not None:
        x = x + self.pos_embed
      rel = self.rel_pos_bias() if self.rel_pos_bias is not None else None
      for blk in self.blocks:
        x = blk(x, rel)
      return self.norm(x)

  return torch, ViT
