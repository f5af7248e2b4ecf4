"""Our encoder <-> timm VisionTransformer state dicts, position-embedding resampling and
the `python -m mim_jax.convert` command line on small files."""
import jax
import numpy as np
import pytest

from mim_jax.evaluation import pretrained
from mim_jax.convert import (cae_channel_permutation, cae_encoder_from_torch, encoder_from_timm,
                             encoder_to_timm, load_torch_state_dict, posemb, save_state_dict,
                             simmim_from_torch)
from mim_jax.convert.__main__ import main
from mim_jax.evaluation.pretrained import load_encoder
from mim_jax.models.vit import ViTEncoder
from test_convert import max_diff, np_block, np_layer_norm, np_patch_embed
from test_convert_official import (CHANS, DEPTH, GRID, HEADS, IMAGE, N, PATCH, TOL, WIDTH,
                                   cae_state_dict, inputs, np_cae_encoder, simmim_state_dict,
                                   torch_vit_class)


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


def tree_equal(a, b):
  return (jax.tree.structure(a) == jax.tree.structure(b) and
          all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b))))


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


def test_abs_pos_embed_resampling():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 1 + 9, 4)).astype(np.float32)
  assert posemb.resample_abs_pos_embed(pe, (3, 3)) is pe  # same grid: unchanged
  out = posemb.resample_abs_pos_embed(pe, (5, 2))
  assert out.shape == (1, 1 + 10, 4)
  np.testing.assert_array_equal(out[:, :1], pe[:, :1])  # cls row kept
  # By hand: torch bicubic (A = -0.75, align_corners=False) of [0, 1] to 4 samples; the
  # first output sits at source -0.25, taps clamped: weights (1.10546875, -0.10546875).
  np.testing.assert_allclose(posemb.bicubic_matrix(2, 4)[:, 1],
                             [-0.10546875, 0.2265625, 0.7734375, 1.10546875])
  const = np.concatenate([np.zeros((1, 1, 4)), np.full((1, 4, 4), 2.5)], axis=1)
  np.testing.assert_allclose(posemb.resample_abs_pos_embed(const, (7, 7))[0, 1:], 2.5)
  torch = pytest.importorskip("torch")
  grid = torch.from_numpy(pe[:, 1:]).reshape(1, 3, 3, 4).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(5, 2), mode="bicubic", align_corners=False)
  assert max_diff(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 10, 4).numpy()) < 1e-5


def test_rel_pos_bias_table_resizing():
  table = np.random.default_rng(0).normal(size=(7 * 7 + 3, 2))
  assert posemb.resize_rel_pos_bias_table(table, (4, 4), (4, 4)) is table
  # SimMIM's remap places the 7 offsets of a 4x4 grid at ±1, ±(1 + q), ±(1 + q + q²)
  # with 1 + q + q² = 4 for a 5x5 target (offsets -4..4): q = (√13 − 1)/2.
  q = (np.sqrt(13.0) - 1) / 2
  pos = posemb.geometric_positions(7, 9)
  np.testing.assert_allclose(pos, [-4, -(1 + q), -1, 0, 1, 1 + q, 4], atol=1e-5)
  # A cubic spline reproduces a bilinear function of the placed positions exactly.
  def f(r, c):
    return 0.3 * r - 0.7 * c + 0.1 * r * c
  grid = f(pos[:, None], pos[None, :]).reshape(-1, 1)
  table = np.concatenate([grid, [[7.0], [8.0], [9.0]]])
  out = posemb.resize_rel_pos_bias_table(table, (4, 4), (5, 5))
  offsets = np.arange(-4, 5.0)
  assert out.shape == (9 * 9 + 3, 1)
  np.testing.assert_allclose(out[:-3, 0], f(offsets[:, None], offsets[None, :]).reshape(-1),
                             atol=1e-4)
  np.testing.assert_array_equal(out[-3:, 0], [7.0, 8.0, 9.0])


# ---------------------------------------------------------------- command line

def test_cli_official_cae_to_timm_and_back(tmp_path, capsys):
  cae_sd = cae_state_dict(seed=7)
  np.savez(tmp_path / "cae.npz", **cae_sd)
  run = str(tmp_path / "cae_run")
  assert main(["from-official", "--format", "cae", "--checkpoint", str(tmp_path / "cae.npz"),
               "--output", run, "--num_heads", str(HEADS)]) == 0
  assert "load_encoder" in capsys.readouterr().out
  encoder, params, config = load_encoder(run)
  assert config.method.name == "cae" and config.model.layer_scale_init == 0.1
  assert (config.model.regressor_depth, config.model.decoder_depth) == (1, 1)
  assert tree_equal(jax.tree.map(np.asarray, params), cae_encoder_from_torch(cae_sd, HEADS))
  images, mask = inputs(hidden=0)
  ref = np_cae_encoder(cae_sd, images.transpose(0, 3, 1, 2), mask)
  out = jax.jit(encoder.module.apply)({"params": params}, images)
  assert max_diff(np.asarray(out)[..., cae_channel_permutation(WIDTH)], ref) < TOL

  timm_file = str(tmp_path / "vit.safetensors")
  assert main(["to-timm", "--workdir", run, "--output", timm_file]) == 0
  run2 = str(tmp_path / "timm_run")
  assert main(["from-timm", "--checkpoint", timm_file, "--output", run2, "--config",
               "configs/simmim.py:vit_base",
               "--num_heads", str(HEADS)]) == 0
  _, params2, config2 = load_encoder(run2)
  assert config2.method.name == "simmim" and config2.model.pos_embedding == "sincos"
  assert tree_equal(params2, params)
  # An existing workdir is not overwritten.
  assert main(["from-timm", "--checkpoint", timm_file, "--output", run2,
               "--num_heads", str(HEADS)]) == 2
  assert "already holds checkpoints" in capsys.readouterr().err

  resized = str(tmp_path / "vit48.safetensors")
  assert main(["resample-timm", "--checkpoint", timm_file, "--image_size", "48",
               "--output", resized]) == 0
  assert load_torch_state_dict(resized)["pos_embed"].shape == (1, 37, WIDTH)


def test_cli_official_simmim_keeps_the_head(tmp_path, capsys):
  sd = simmim_state_dict(seed=8)
  np.savez(tmp_path / "simmim.npz", **sd)
  run = str(tmp_path / "simmim_run")
  assert main(["from-official", "--format", "simmim", "--checkpoint",
               str(tmp_path / "simmim.npz"), "--output", run]) == 0
  config, state = pretrained.restore_state(run)
  assert config.model.pos_embedding == "shared_rel_bias" and config.model.num_heads == HEADS
  assert tree_equal(jax.tree.map(np.asarray, state.params), simmim_from_torch(sd))
  assert int(state.step) == 0

  bad = {**sd, "encoder.blocks.0.attn.qkv.bias": np.zeros(3 * WIDTH, np.float32)}
  np.savez(tmp_path / "bad.npz", **bad)
  assert main(["from-official", "--format", "simmim", "--checkpoint", str(tmp_path / "bad.npz"),
               "--output", str(tmp_path / "bad_run")]) == 2
  assert "unexpected keys: blocks.0.attn.qkv.bias" in capsys.readouterr().err
