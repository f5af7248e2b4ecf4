"""CAE and SimMIM checkpoints -> our encoder, checked against an independent NumPy forward
of the official models (Atten4Vis/CAE models/modeling_cae_helper.py
`VisionTransformerEncoder`, microsoft/SimMIM models/simmim.py `VisionTransformerForSimMIM`)
and, when torch is installed, a torch model with the official module names."""
import math

import jax
import numpy as np
import pytest

from mim_jax.convert import (cae_channel_permutation, cae_dims_from_torch,
                             cae_encoder_from_torch, encoder_kwargs, simmim_dims_from_torch,
                             simmim_encoder_from_torch, simmim_from_torch)
from mim_jax.models.vit import ViTEncoder, sincos_2d, unpatchify
from test_convert import (_add_linear, _add_norm, max_diff, np_block, np_layer_norm,
                          np_patch_embed)

IMAGE, PATCH, CHANS, WIDTH, DEPTH, HEADS, MLP = 32, 8, 3, 32, 2, 4, 4
GRID = IMAGE // PATCH
N = GRID * GRID
BATCH = 2
TOL = 1e-4


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


# ---------------------------------------------------------------- CAE

def run_cae(sd, images, mask):
  dims = cae_dims_from_torch(sd, num_heads=HEADS)
  encoder = ViTEncoder(**encoder_kwargs(dims))
  visible_idx = np.stack([np.flatnonzero(~m) for m in mask])
  out = jax.jit(encoder.apply)({"params": cae_encoder_from_torch(sd, HEADS)}, images,
                               visible_idx)
  return np.asarray(out)[..., cae_channel_permutation(WIDTH)]


@pytest.mark.parametrize("layer_scale", [True, False])
def test_cae_matches_numpy_reference(layer_scale):
  sd = cae_state_dict(layer_scale=layer_scale)
  dims = cae_dims_from_torch(sd, num_heads=HEADS)
  assert dims["channels_permuted"] and dims["qkv_bias"] == "qv"
  assert dims["layer_scale_init"] == (0.1 if layer_scale else None)
  assert (dims["image_size"], dims["depth"], dims["mlp_ratio"]) == (IMAGE, DEPTH, MLP)
  images, mask = inputs()
  ref = np_cae_encoder(sd, images.transpose(0, 3, 1, 2), mask)
  ours = run_cae(sd, images, mask)
  assert ours.shape == (BATCH, 1 + N - 9, WIDTH)
  assert max_diff(ours, ref) < TOL


def test_cae_channel_permutation_and_stripped_keys():
  perm = cae_channel_permutation(8)
  np.testing.assert_array_equal(perm, [4, 5, 6, 7, 0, 1, 2, 3])
  np.testing.assert_array_equal(perm[perm], np.arange(8))  # its own inverse
  sd = cae_state_dict()
  stripped = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
  a, b = cae_encoder_from_torch(sd, HEADS), cae_encoder_from_torch(stripped, HEADS)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  # The half swap is exactly the difference between CAE's and MAE's sin-cos layouts.
  np.testing.assert_allclose(cae_sincos(WIDTH, GRID)[0, 1:][:, cae_channel_permutation(WIDTH)],
                             sincos_2d(WIDTH, (GRID, GRID)), atol=1e-6)


def test_cae_errors_name_the_key():
  sd = cae_state_dict()
  learned = {**sd, "encoder.pos_embed": sd["encoder.pos_embed"] + np.float32(0.01)}
  with pytest.raises(ValueError, match="pos_embed is not CAE's fixed"):
    cae_encoder_from_torch(learned, HEADS)
  bad = {**sd, "encoder.blocks.1.attn.q_bias": np.zeros(7, np.float32)}
  with pytest.raises(ValueError, match=r"wrong shapes: blocks\.1\.attn\.q_bias \(7,\) "
                                       r"\(expected \(32,\)\)"):
    cae_encoder_from_torch(bad, HEADS)
  with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.attn\.k_bias"):
    cae_encoder_from_torch({**sd, "encoder.blocks.0.attn.k_bias": np.zeros(WIDTH)}, HEADS)
  with pytest.raises(ValueError, match="pass num_heads"):
    cae_encoder_from_torch(sd)


# ---------------------------------------------------------------- SimMIM

def test_simmim_matches_numpy_reference():
  sd = simmim_state_dict()
  dims = simmim_dims_from_torch(sd)
  assert dims["num_heads"] == HEADS and dims["pos_embedding"] == "shared_rel_bias"
  assert dims["use_mask_token"] and dims["layer_scale_init"] == 0.1
  images, mask = inputs(seed=2, hidden=10)
  ref_z, ref_rec = np_simmim(sd, images.transpose(0, 3, 1, 2), mask)
  params = simmim_from_torch(sd)
  encoder = ViTEncoder(**encoder_kwargs(dims))
  z = jax.jit(encoder.apply)({"params": params["encoder"]}, images,
                             token_mask=mask.astype(np.float32))
  patches = np.asarray(z)[:, 1:] @ params["decoder"]["kernel"] + params["decoder"]["bias"]
  rec = np.asarray(unpatchify(patches, PATCH, (GRID, GRID)))
  assert max_diff(z, ref_z) < TOL
  assert max_diff(rec, ref_rec.transpose(0, 2, 3, 1)) < TOL


def test_simmim_without_qkv_bias_and_errors():
  sd = simmim_state_dict(qkv_bias=False)
  assert simmim_dims_from_torch(sd)["qkv_bias"] == "none"
  params = simmim_encoder_from_torch(sd)
  np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["bias"], 0.0)
  sd = simmim_state_dict()
  index = sd["encoder.rel_pos_bias.relative_position_index"].copy()
  index[1, 2], index[2, 1] = index[2, 1], index[1, 2]
  with pytest.raises(ValueError, match="relative_position_index differs"):
    simmim_encoder_from_torch({**sd, "encoder.rel_pos_bias.relative_position_index": index})
  with pytest.raises(ValueError, match="pos_embed: this SimMIM encoder has a learned"):
    simmim_encoder_from_torch({**sd, "encoder.pos_embed": np.zeros((1, N + 1, WIDTH))})
  with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.gamma_2"):
    simmim_encoder_from_torch({k: v for k, v in sd.items()
                               if k != "encoder.blocks.1.gamma_2"})


def test_simmim_at_another_image_size_resizes_the_bias_table():
  sd = simmim_state_dict()
  params = simmim_encoder_from_torch(sd, image_size=IMAGE + 2 * PATCH)  # 4x4 -> 6x6 grid
  table = params["rel_pos_bias"]["relative_position_bias_table"]
  assert table.shape == (11 * 11 + 3, HEADS)
  old = sd["encoder.rel_pos_bias.relative_position_bias_table"]
  np.testing.assert_array_equal(table[-3:], old[-3:])  # cls entries kept
  # Offset (0, 0) sits at the centre of both grids: the spline passes through it.
  np.testing.assert_allclose(table[5 * 11 + 5], old[3 * 7 + 3], atol=1e-5)
  dims = simmim_dims_from_torch(sd, image_size=IMAGE + 2 * PATCH)
  encoder = ViTEncoder(**encoder_kwargs(dims))
  images = np.zeros((1, IMAGE + 2 * PATCH, IMAGE + 2 * PATCH, CHANS), np.float32)
  assert jax.eval_shape(encoder.apply, {"params": params}, images).shape == (1, 37, WIDTH)


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


def test_cae_and_simmim_match_torch_reference():
  torch, ViT = torch_vit_class()
  images, mask = inputs(seed=3, hidden=0)
  nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

  cae_sd = cae_state_dict(seed=4)
  model = ViT(beit=True, pos_embed=True, mask_token=False, rel_pos_bias=False)
  model.load_state_dict({k[len("encoder."):]: torch.from_numpy(v) for k, v in cae_sd.items()
                         if k.startswith("encoder.")}, strict=True)
  with torch.no_grad():
    ref = model(nchw).numpy()
  assert max_diff(run_cae(cae_sd, images, mask), ref) < TOL

  sim_sd = simmim_state_dict(seed=5)
  model = ViT(beit=True, pos_embed=False, mask_token=True, rel_pos_bias=True)
  model.load_state_dict({k[len("encoder."):]: torch.from_numpy(v) for k, v in sim_sd.items()
                         if k.startswith("encoder.")}, strict=True)
  _, mask = inputs(seed=6, hidden=7)
  with torch.no_grad():
    ref = model(nchw, torch.from_numpy(mask)).numpy()
  encoder = ViTEncoder(**encoder_kwargs(simmim_dims_from_torch(sim_sd)))
  ours = jax.jit(encoder.apply)({"params": simmim_encoder_from_torch(sim_sd)}, images,
                                token_mask=mask.astype(np.float32))
  assert max_diff(ours, ref) < TOL
