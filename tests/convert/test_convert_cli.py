"""The `python -m mim_jax.convert` command line (mim_jax/convert/__main__.py, workdir.py) on
small files: official CAE -> run -> timm -> run, official SimMIM with its head."""
import jax
import numpy as np

from mim_jax.convert import (cae_channel_permutation, cae_encoder_from_torch,
                             load_torch_state_dict, simmim_from_torch)
from mim_jax.convert.__main__ import main
from mim_jax.evaluation import pretrained
from mim_jax.evaluation.pretrained import load_encoder
from official_models import (HEADS, TOL, WIDTH, cae_state_dict, inputs, max_diff,
                             np_cae_encoder, simmim_state_dict, tree_equal)


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
