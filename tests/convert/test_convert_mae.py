"""mim_jax/convert/mae.py: PyTorch MAE checkpoint -> Flax conversion, checked against an
independent NumPy forward pass of mae/models_mae.py `MaskedAutoencoderViT` (timm 0.3.2
`Block`, `PatchEmbed`)."""
import argparse
import logging
import sys

import jax
import numpy as np
import pytest

from mim_jax.convert import (load_torch_state_dict, mae_encoder_from_torch, mae_from_torch,
                             vit_dims_from_torch)
from mim_jax.masking import mask_to_indices
from mim_jax.models.decoders import MAEDecoder
from mim_jax.models.vit import ViTEncoder
from official_models import (_add_linear, _add_norm, max_diff, np_block, np_layer_norm,
                             np_linear, np_patch_embed)

IMAGE, PATCH, CHANS, WIDTH, DEPTH, HEADS = 32, 8, 3, 32, 2, 4
DEC_WIDTH, DEC_DEPTH, DEC_HEADS, MLP_RATIO = 16, 1, 2, 4
GRID = IMAGE // PATCH
NUM_PATCHES = GRID * GRID
BATCH, KEEP = 2, 5
TOL = 1e-4


# ---------------------------------------------------------------- official-layout state dict

def official_sincos(dim, grid):
  """mae/util/pos_embed.py `get_2d_sincos_pos_embed(dim, grid, cls_token=True)`: first half
  from the column index, second from the row index, each [sin | cos]; zero cls row."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  col, row = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
  emb = np.concatenate([one_d(dim // 2, col), one_d(dim // 2, row)], axis=1)
  return np.concatenate([np.zeros((1, dim)), emb], axis=0)[None].astype(np.float32)


def _add_blocks(sd, rng, prefix, depth, d):
  for i in range(depth):
    b = f"{prefix}.{i}."
    _add_norm(sd, rng, b + "norm1", d)
    _add_linear(sd, rng, b + "attn.qkv", 3 * d, d)
    _add_linear(sd, rng, b + "attn.proj", d, d)
    _add_norm(sd, rng, b + "norm2", d)
    _add_linear(sd, rng, b + "mlp.fc1", MLP_RATIO * d, d)
    _add_linear(sd, rng, b + "mlp.fc2", d, MLP_RATIO * d)


def official_state_dict(seed=0, decoder=True):
  """Random weights in the key layout and shapes of `MaskedAutoencoderViT.state_dict()`."""
  rng = np.random.default_rng(seed)
  sd = {"cls_token": rng.normal(0, 0.5, (1, 1, WIDTH)),
        "pos_embed": official_sincos(WIDTH, GRID),
        "patch_embed.proj.weight": rng.normal(0, 1 / PATCH, (WIDTH, CHANS, PATCH, PATCH)),
        "patch_embed.proj.bias": rng.normal(0, 0.1, (WIDTH,))}
  _add_blocks(sd, rng, "blocks", DEPTH, WIDTH)
  _add_norm(sd, rng, "norm", WIDTH)
  if decoder:
    _add_linear(sd, rng, "decoder_embed", DEC_WIDTH, WIDTH)
    sd["mask_token"] = rng.normal(0, 0.5, (1, 1, DEC_WIDTH))
    sd["decoder_pos_embed"] = official_sincos(DEC_WIDTH, GRID)
    _add_blocks(sd, rng, "decoder_blocks", DEC_DEPTH, DEC_WIDTH)
    _add_norm(sd, rng, "decoder_norm", DEC_WIDTH)
    _add_linear(sd, rng, "decoder_pred", PATCH * PATCH * CHANS, DEC_WIDTH)
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


# ---------------------------------------------------------------- independent NumPy forward

def np_mae_forward(sd, imgs_nchw, ids_shuffle, keep):
  """`forward_encoder` + `forward_decoder` of mae/models_mae.py with a given shuffle."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  b = imgs_nchw.shape[0]
  x = np_patch_embed(sd, imgs_nchw, PATCH) + sd["pos_embed"][:, 1:]
  ids_restore = np.argsort(ids_shuffle, axis=1)
  x = np.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
  cls = np.broadcast_to(sd["cls_token"] + sd["pos_embed"][:, :1], (b, 1, WIDTH))
  x = np.concatenate([cls, x], axis=1)
  for i in range(DEPTH):
    x = np_block(x, sd, f"blocks.{i}", HEADS)
  latent = np_layer_norm(x, sd, "norm")

  y = np_linear(latent, sd, "decoder_embed")
  mask_tokens = np.broadcast_to(sd["mask_token"], (b, ids_restore.shape[1] + 1 - y.shape[1],
                                                   DEC_WIDTH))
  y_ = np.concatenate([y[:, 1:], mask_tokens], axis=1)
  y_ = np.take_along_axis(y_, ids_restore[..., None], axis=1)
  y = np.concatenate([y[:, :1], y_], axis=1) + sd["decoder_pos_embed"]
  for i in range(DEC_DEPTH):
    y = np_block(y, sd, f"decoder_blocks.{i}", DEC_HEADS)
  pred = np_linear(np_layer_norm(y, sd, "decoder_norm"), sd, "decoder_pred")[:, 1:]
  return latent, pred


# ---------------------------------------------------------------- helpers

def make_inputs(seed=1):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, IMAGE, IMAGE, CHANS)).astype(np.float32)  # NHWC
  ids_shuffle = np.argsort(rng.uniform(size=(BATCH, NUM_PATCHES)), axis=1)
  return images, ids_shuffle


def modules(dims):
  encoder = ViTEncoder(image_size=dims["image_size"], patch_size=dims["patch_size"],
                       width=dims["width"], depth=dims["depth"], num_heads=HEADS,
                       mlp_ratio=dims["mlp_ratio"])
  decoder = MAEDecoder(grid_hw=dims["grid_hw"], out_dim=dims["decoder_out_dim"],
                       width=dims["decoder_width"], depth=dims["decoder_depth"],
                       num_heads=DEC_HEADS, mlp_ratio=dims["mlp_ratio"])
  return encoder, decoder


def run_ours(sd, images, visible_idx, restore_idx):
  encoder, decoder = modules(vit_dims_from_torch(sd))
  params = mae_from_torch(sd)
  latent = jax.jit(encoder.apply)({"params": params["encoder"]}, images, visible_idx)
  pred = jax.jit(decoder.apply)({"params": params["decoder"]}, latent, restore_idx)
  return np.asarray(latent), np.asarray(pred)


# ---------------------------------------------------------------- tests

def test_dims():
  dims = vit_dims_from_torch(official_state_dict())
  assert dims == dict(patch_size=PATCH, in_chans=CHANS, image_size=IMAGE, grid_hw=(GRID, GRID),
                      width=WIDTH, depth=DEPTH, mlp_ratio=MLP_RATIO, num_heads=None,
                      decoder_width=DEC_WIDTH, decoder_depth=DEC_DEPTH, decoder_num_heads=None,
                      decoder_out_dim=PATCH * PATCH * CHANS)
  enc = vit_dims_from_torch(official_state_dict(decoder=False))
  assert enc["decoder_width"] is None and enc["decoder_depth"] is None


def test_matches_numpy_reference():
  sd = official_state_dict()
  images, ids_shuffle = make_inputs()
  ref_latent, ref_pred = np_mae_forward(sd, images.transpose(0, 3, 1, 2), ids_shuffle, KEEP)
  latent, pred = run_ours(sd, images, ids_shuffle[:, :KEEP], np.argsort(ids_shuffle, axis=1))
  assert latent.shape == (BATCH, 1 + KEEP, WIDTH)
  assert pred.shape == (BATCH, NUM_PATCHES, PATCH * PATCH * CHANS)
  assert max_diff(latent, ref_latent) < TOL
  assert max_diff(pred, ref_pred) < TOL


def test_matches_reference_with_our_masking():
  """Our mask_to_indices keeps visible tokens in position order; the decoder output is the
  same as with MAE's shuffled order (attention is permutation-equivariant)."""
  sd = official_state_dict()
  images, ids_shuffle = make_inputs(seed=2)
  _, ref_pred = np_mae_forward(sd, images.transpose(0, 3, 1, 2), ids_shuffle, KEEP)
  mask = np.ones((BATCH, NUM_PATCHES), np.float32)
  np.put_along_axis(mask, ids_shuffle[:, :KEEP], 0.0, axis=1)
  visible_idx, _, restore_idx = mask_to_indices(mask, KEEP)
  _, pred = run_ours(sd, images, visible_idx, restore_idx)
  assert max_diff(pred, ref_pred) < TOL


def test_encoder_only_state_dict(caplog):
  full = official_state_dict()
  enc_sd = official_state_dict(decoder=False)
  with pytest.raises(ValueError, match="encoder-only"):
    mae_from_torch(enc_sd)
  params = mae_encoder_from_torch(enc_sd)
  expected = mae_from_torch(full)["encoder"]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, params, expected)))

  # Fine-tuned classifier keys and (for the encoder converter) decoder keys are ignored.
  extra = {**full, "head.weight": np.zeros((10, WIDTH), np.float32),
           "head.bias": np.zeros((10,), np.float32),
           "fc_norm.weight": np.ones((WIDTH,), np.float32)}
  with caplog.at_level(logging.INFO, logger="mim_jax.convert"):
    mae_encoder_from_torch(extra)
    mae_from_torch(extra)
  assert "head.weight" in caplog.text and "decoder_embed.weight" in caplog.text

  images, ids_shuffle = make_inputs()
  ref_latent, _ = np_mae_forward(full, images.transpose(0, 3, 1, 2), ids_shuffle, KEEP)
  encoder, _ = modules(vit_dims_from_torch(full))
  latent = encoder.apply({"params": params}, images, ids_shuffle[:, :KEEP])
  assert max_diff(latent, ref_latent) < TOL


@pytest.mark.parametrize("key", ["pos_embed", "decoder_pos_embed"])
def test_pos_embed_mismatch(key):
  base = official_state_dict()
  d = base[key].shape[-1]
  half = d // 2
  swapped = base[key].copy()  # row index in the first half: another layout
  swapped[:, 1:] = np.concatenate([base[key][:, 1:, half:], base[key][:, 1:, :half]], axis=-1)
  learned = base[key] + np.random.default_rng(0).normal(0, 0.02, base[key].shape)
  cls_row = base[key].copy()
  cls_row[:, 0] = 0.1
  for bad in (swapped, learned, cls_row):
    with pytest.raises(ValueError, match=key):
      mae_from_torch({**base, key: bad.astype(np.float32)})
  tiny = base[key] + np.float32(5e-7)
  mae_from_torch({**base, key: tiny})


def test_unexpected_missing_and_misshapen_keys():
  base = official_state_dict()
  with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.ls1\.gamma, foo\.bar"):
    mae_from_torch({**base, "foo.bar": np.zeros(3), "blocks.0.ls1.gamma": np.zeros(WIDTH)})
  with pytest.raises(ValueError, match="unexpected keys: foo.bar"):
    mae_encoder_from_torch({**base, "foo.bar": np.zeros(3)})
  missing = {k: v for k, v in base.items() if k not in ("blocks.1.mlp.fc2.bias", "norm.weight")}
  with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias, norm\.weight"):
    mae_encoder_from_torch(missing)
  with pytest.raises(ValueError, match=r"wrong shapes: blocks\.0\.attn\.proj\.bias \(5,\)"):
    mae_from_torch({**base, "blocks.0.attn.proj.bias": np.zeros(5, np.float32)})


def test_load_npz_and_pth_without_torch(tmp_path, monkeypatch):
  sd = official_state_dict()
  np.savez(tmp_path / "sd.npz", **sd)
  loaded = load_torch_state_dict(tmp_path / "sd.npz")
  assert loaded.keys() == sd.keys()
  assert all(np.array_equal(loaded[k], sd[k]) for k in sd)
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match="pip install torch"):
    load_torch_state_dict(tmp_path / "mae_pretrain_vit_base.pth")


def test_matches_torch_reference(tmp_path):
  """Same comparison against a torch model built from torch.nn primitives with the official
  module names, loaded strictly from the state dict and round-tripped through a .pth."""
  torch = pytest.importorskip("torch")
  nn, F = torch.nn, torch.nn.functional

  class Attention(nn.Module):
    def __init__(self, d, heads):
      super().__init__()
      self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
      b, n, c = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
      attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
      return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

  class Mlp(nn.Module):
    def __init__(self, d):
      super().__init__()
      self.fc1, self.fc2 = nn.Linear(d, MLP_RATIO * d), nn.Linear(MLP_RATIO * d, d)

    def forward(self, x):
      return self.fc2(F.gelu(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self, d, heads):
      super().__init__()
      self.norm1, self.attn = nn.LayerNorm(d, eps=1e-6), Attention(d, heads)
      self.norm2, self.mlp = nn.LayerNorm(d, eps=1e-6), Mlp(d)

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class PatchEmbed(nn.Module):
    def __init__(self):
      super().__init__()
      self.proj = nn.Conv2d(CHANS, WIDTH, kernel_size=PATCH, stride=PATCH)

  class MAE(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_embed = PatchEmbed()
      self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
      self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES + 1, WIDTH))
      self.blocks = nn.ModuleList([Block(WIDTH, HEADS) for _ in range(DEPTH)])
      self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
      self.decoder_embed = nn.Linear(WIDTH, DEC_WIDTH)
      self.mask_token = nn.Parameter(torch.zeros(1, 1, DEC_WIDTH))
      self.decoder_pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES + 1, DEC_WIDTH))
      self.decoder_blocks = nn.ModuleList([Block(DEC_WIDTH, DEC_HEADS) for _ in range(DEC_DEPTH)])
      self.decoder_norm = nn.LayerNorm(DEC_WIDTH, eps=1e-6)
      self.decoder_pred = nn.Linear(DEC_WIDTH, PATCH * PATCH * CHANS)

    def forward(self, imgs, ids_shuffle, keep):
      x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
      ids_restore = torch.argsort(ids_shuffle, dim=1)
      x = torch.gather(x, 1, ids_shuffle[:, :keep, None].repeat(1, 1, WIDTH))
      cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
      x = torch.cat([cls, x], dim=1)
      for blk in self.blocks:
        x = blk(x)
      latent = self.norm(x)
      y = self.decoder_embed(latent)
      mask_tokens = self.mask_token.repeat(y.shape[0], ids_restore.shape[1] + 1 - y.shape[1], 1)
      y_ = torch.cat([y[:, 1:], mask_tokens], dim=1)
      y_ = torch.gather(y_, 1, ids_restore[..., None].repeat(1, 1, DEC_WIDTH))
      y = torch.cat([y[:, :1], y_], dim=1) + self.decoder_pos_embed
      for blk in self.decoder_blocks:
        y = blk(y)
      return latent, self.decoder_pred(self.decoder_norm(y))[:, 1:]

  model = MAE()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in official_state_dict().items()},
                        strict=True)
  # As mae/util/misc.py `save_model` writes it, argparse Namespace included.
  torch.save({"model": model.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=1e-3)},
             tmp_path / "checkpoint.pth")
  sd = load_torch_state_dict(tmp_path / "checkpoint.pth")
  assert sd.keys() == model.state_dict().keys()

  images, ids_shuffle = make_inputs(seed=3)
  with torch.no_grad():
    ref_latent, ref_pred = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 torch.from_numpy(ids_shuffle), KEEP)
  latent, pred = run_ours(sd, images, ids_shuffle[:, :KEEP], np.argsort(ids_shuffle, axis=1))
  assert max_diff(latent, ref_latent.numpy()) < TOL
  assert max_diff(pred, ref_pred.numpy()) < TOL
