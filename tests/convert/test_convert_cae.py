"""mim_jax/convert/cae.py: CAE checkpoints -> our encoder, checked against an independent
NumPy forward of the official model (Atten4Vis/CAE models/modeling_cae_helper.py
`VisionTransformerEncoder`) and, when torch is installed, a torch model with the official
module names."""
import jax
import numpy as np
import pytest

from mim_jax.convert import cae_channel_permutation, cae_dims_from_torch, cae_encoder_from_torch
from mim_jax.models.vit import sincos_2d
from official_models import (BATCH, DEPTH, GRID, HEADS, IMAGE, MLP, N, TOL, WIDTH, cae_sincos,
                             cae_state_dict, inputs, max_diff, np_cae_encoder, run_cae,
                             torch_vit_class)


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


# ---------------------------------------------------------------- torch

def test_cae_matches_torch_reference():
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
