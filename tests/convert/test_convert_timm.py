"""mim_jax/convert/timm.py: our encoder <-> timm VisionTransformer state dicts, and the
safetensors / .pth files."""
import jax
import numpy as np
import pytest

from mim_jax.convert import (encoder_from_timm, encoder_to_timm, load_torch_state_dict,
                             save_state_dict)
from mim_jax.models.vit import ViTEncoder
from official_models import (CHANS, DEPTH, GRID, HEADS, IMAGE, N, PATCH, TOL, WIDTH, inputs,
                             max_diff, np_block, np_layer_norm, np_patch_embed, torch_vit_class,
                             tree_equal)


def our_encoder(layer_scale=0.1, seed=0):
  """A ViTEncoder and random params of its (unscanned) layout; every entry random, so that
  every mapped LayerScale, norm and bias matters."""
  encoder = ViTEncoder(image_size=IMAGE, patch_size=PATCH, width=WIDTH, depth=DEPTH,
                       num_heads=HEADS, layer_scale_init=layer_scale)
  shapes = jax.eval_shape(encoder.init, jax.random.PRNGKey(0),
                          np.zeros((1, IMAGE, IMAGE, CHANS), np.float32))["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
  return encoder, params


def np_timm_forward(sd, imgs_nchw):
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  x = np_patch_embed(sd, imgs_nchw, PATCH)
  x = np.concatenate([np.broadcast_to(sd["cls_token"], (x.shape[0], 1, WIDTH)), x], axis=1)
  x = x + sd["pos_embed"]
  for i in range(DEPTH):
    x = np_block(x, sd, f"blocks.{i}", HEADS)
  return np_layer_norm(x, sd, "norm")


@pytest.mark.parametrize("layer_scale", [0.1, None])
def test_timm_export_matches_reference_and_round_trips_exactly(layer_scale):
  encoder, params = our_encoder(layer_scale)
  head = {"kernel": np.arange(WIDTH * 5, dtype=np.float32).reshape(WIDTH, 5), "bias": np.ones(5)}
  sd = encoder_to_timm(params, PATCH, (GRID, GRID), head=head)
  blocks = {k for k in sd if k.startswith("blocks.0.")}
  expected = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
  if layer_scale:
    expected |= {"ls1.gamma", "ls2.gamma"}
  assert blocks == {"blocks.0." + k for k in expected}
  assert sd["pos_embed"].shape == (1, 1 + N, WIDTH) and not sd["pos_embed"][0, 0].any()
  assert sd["patch_embed.proj.weight"].shape == (WIDTH, CHANS, PATCH, PATCH)
  assert sd["head.weight"].shape == (5, WIDTH)

  images, _ = inputs()
  ours = jax.jit(encoder.apply)({"params": params}, images)
  assert max_diff(ours, np_timm_forward(sd, images.transpose(0, 3, 1, 2))) < TOL

  back, back_head = encoder_from_timm(sd, num_heads=HEADS)
  assert tree_equal(back, params) and tree_equal(back_head, head)


def test_timm_export_runs_in_torch(tmp_path):
  torch, ViT = torch_vit_class()
  encoder, params = our_encoder()
  save_state_dict(encoder_to_timm(params, PATCH, (GRID, GRID)), tmp_path / "vit.pth")
  model = ViT(beit=False, pos_embed=True, mask_token=False, rel_pos_bias=False)
  model.load_state_dict(torch.load(tmp_path / "vit.pth"), strict=True)
  images, _ = inputs(seed=4)
  with torch.no_grad():
    ref = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  assert max_diff(jax.jit(encoder.apply)({"params": params}, images), ref) < TOL
  back, _ = encoder_from_timm(load_torch_state_dict(tmp_path / "vit.pth"), num_heads=HEADS)
  assert tree_equal(back, params)


def test_safetensors_round_trip_and_import_errors(tmp_path):
  _, params = our_encoder()
  sd = encoder_to_timm(params, PATCH, (GRID, GRID))
  save_state_dict(sd, tmp_path / "vit.safetensors")
  loaded = load_torch_state_dict(tmp_path / "vit.safetensors")
  assert loaded.keys() == sd.keys() and all(np.array_equal(loaded[k], sd[k]) for k in sd)
  learned = {**sd, "pos_embed": sd["pos_embed"] + np.float32(0.02)}
  with pytest.raises(ValueError, match="pos_embed is not MAE's fixed 2-D sin-cos"):
    encoder_from_timm(learned, num_heads=HEADS)
  with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.attn\.q_norm\.weight"):
    encoder_from_timm({**sd, "blocks.0.attn.q_norm.weight": np.ones(8)}, num_heads=HEADS)
  with pytest.raises(ValueError, match="no shared relative position bias"):
    encoder_to_timm(params, PATCH, (GRID, GRID), pos_embedding="shared_rel_bias")
  # At another image size the fixed embedding is recomputed: same params, 6x6 pos_embed.
  params_48, _ = encoder_from_timm(sd, num_heads=HEADS, image_size=48)
  assert tree_equal(params_48, params)
  assert encoder_to_timm(params, PATCH, (6, 6))["pos_embed"].shape == (1, 37, WIDTH)
