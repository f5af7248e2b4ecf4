"""mim_jax/convert/simmim.py: SimMIM checkpoints -> our encoder and head, checked against an
independent NumPy forward of the official model (microsoft/SimMIM models/simmim.py
`VisionTransformerForSimMIM`) and, when torch is installed, a torch model with the
official module names."""
import jax
import numpy as np
import pytest

from mim_jax.convert import (encoder_kwargs, simmim_dims_from_torch, simmim_encoder_from_torch,
                             simmim_from_torch)
from mim_jax.models.vit import ViTEncoder, unpatchify
from official_models import (CHANS, GRID, HEADS, IMAGE, N, PATCH, TOL, WIDTH, inputs, max_diff,
                             np_simmim, simmim_state_dict, torch_vit_class)


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

def test_simmim_matches_torch_reference():
  torch, ViT = torch_vit_class()
  images, _ = inputs(seed=3, hidden=0)
  nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

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
