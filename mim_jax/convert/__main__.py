"""Command line: convert checkpoints between official PyTorch code, timm and mim_jax.

  python -m mim_jax.convert from-official --format {mae,cae,simmim} --checkpoint X.pth \
      --output DIR [--config configs/<format>.py:vit_base] [--image_size N] [--num_heads H]
  python -m mim_jax.convert from-timm --checkpoint model.safetensors --output DIR \
      [--config configs/mae.py:vit_base] [--image_size N] [--num_heads H]
  python -m mim_jax.convert to-timm --workdir DIR --output model.safetensors|model.pth \
      [--image_size N] [--step S] [--use_target]
  python -m mim_jax.convert resample-timm --checkpoint in.pth --image_size N --output out.pth

from-official / from-timm write DIR as a pretraining workdir (config.json and checkpoint
step 0, `mim_jax/convert/workdir.py`) of the recipe in `--config` (path[:variant], run
from the repository root) with the checkpoint's encoder:
`mim_jax.evaluation.pretrained.load_encoder(DIR)` and the evaluation configs read it like a
run of our trainer. to-timm exports the encoder the run's method evaluates
(`Method.eval_encoder`, e.g. Latent MIM's at grid·patch px).
Checkpoints are .pth (needs torch), .safetensors or .npz state dicts.
"""
import argparse
import logging
import sys

import jax
import numpy as np

from mim_jax import config_files
from mim_jax.convert import cae, common, mae, posemb, simmim, timm, workdir
from mim_jax.models import vit

FORMATS = ("mae", "cae", "simmim")


def _official(args):
  sd = common.load_torch_state_dict(args.checkpoint)
  decoder = None
  if args.format == "mae":
    dims = mae.vit_dims_from_torch(sd)
    dims["num_heads"] = common.heads_for(dims["width"], args.num_heads)
    if dims["decoder_width"] is not None:
      params = mae.mae_from_torch(sd)  # {'encoder', 'decoder'} of our MAE
      decoder = dict(decoder_width=dims["decoder_width"], decoder_depth=dims["decoder_depth"],
                     decoder_num_heads=args.decoder_num_heads or dims["decoder_num_heads"])
      if decoder["decoder_num_heads"] is None:
        raise ValueError(f"Decoder width {dims['decoder_width']} is not MAE's 512: pass "
                         "--decoder_num_heads.")
    else:
      params = {"encoder": mae.mae_encoder_from_torch(sd)}
  elif args.format == "cae":
    dims = cae.cae_dims_from_torch(sd, args.num_heads)
    params = {"encoder": cae.cae_encoder_from_torch(sd, args.num_heads)}
    # The regressor and decoder are initialised afresh, at the checkpoint's depths and the
    # encoder's width (CAE's heads run at the encoder width).
    decoder = {k: common.depth_of(sd, prefix) for k, prefix in
               (("regressor_depth", "regresser.regressor_blocks"),
                ("decoder_depth", "decoder.decoder_blocks")) if common.depth_of(sd, prefix)}
    decoder.update(decoder_width=dims["width"], decoder_num_heads=dims["num_heads"])
    if dims["channels_permuted"]:
      logging.info("CAE sin-cos layout: encoder channels are stored half-swapped "
                   "(mim_jax/convert/cae.py); features are the official ones permuted.")
  else:
    dims = simmim.simmim_dims_from_torch(sd, args.image_size)
    params = {"encoder": simmim.simmim_encoder_from_torch(sd, args.image_size)}
    if "decoder.0.weight" in sd:
      params["decoder"] = simmim.simmim_head_from_torch(sd, dims["patch_size"])
  image_size = args.image_size or dims["image_size"]
  recipe = config_files.load(args.config or f"configs/{args.format}.py:vit_base")
  config = workdir.converted_config(recipe, dims, image_size, decoder)
  encoder = params.pop("encoder")
  workdir.write_workdir(args.output, config, encoder, params)
  return f"{args.format} checkpoint {args.checkpoint}", config


def _from_timm(args):
  sd = common.load_torch_state_dict(args.checkpoint)
  dims = timm.timm_dims(sd, args.num_heads, args.image_size)
  params, head = timm.encoder_from_timm(sd, args.num_heads, args.image_size)
  if head is not None:
    logging.info("Dropping the classifier head.* (%d classes): pretraining workdirs hold "
                 "no classifier.", head["kernel"].shape[-1])
  config = workdir.converted_config(config_files.load(args.config), dims, dims["image_size"])
  workdir.write_workdir(args.output, config, params)
  return f"timm state dict {args.checkpoint}", config


def _to_timm(args):
  from mim_jax.evaluation.pretrained import load_encoder
  spec, params, _ = load_encoder(args.workdir, image_size=args.image_size, step=args.step,
                                 use_target=args.use_target)
  encoder, params = vit.unrolled(spec.module, jax.tree.map(np.asarray, params))
  sd = timm.encoder_to_timm(params, encoder.patch_size, encoder.grid_hw,
                            encoder.pos_embedding)
  common.save_state_dict(sd, args.output)
  print(f"Wrote {args.output}: timm VisionTransformer state dict, {len(sd)} tensors, "
        f"img_size={encoder.image_size}, patch_size={encoder.patch_size}, "
        f"embed_dim={encoder.width}, depth={encoder.depth}, num_heads={encoder.num_heads}"
        + (", init_values=<any> (LayerScale)" if encoder.layer_scale_init else "")
        + ", num_classes=0.")


def _resample_timm(args):
  sd = common.load_torch_state_dict(args.checkpoint)
  dims = common.patch_dims(sd)
  grid = args.image_size // dims["patch_size"]
  if grid * dims["patch_size"] != args.image_size:
    raise ValueError(f"--image_size={args.image_size} is not a multiple of the patch size "
                     f"{dims['patch_size']}.")
  sd["pos_embed"] = posemb.resample_abs_pos_embed(sd["pos_embed"], (grid, grid))
  common.save_state_dict(sd, args.output)
  print(f"Wrote {args.output}: pos_embed {dims['grid_hw']} -> {(grid, grid)} grid.")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m mim_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  def add_heads(s):
    s.add_argument("--num_heads", type=int, default=None,
                   help="attention heads (not stored in state dicts; default: the published "
                        "count for ViT-Ti/S/B/L/H widths; SimMIM reads it off its bias table)")

  s = sub.add_parser("from-official", help="official MAE/CAE/SimMIM checkpoint -> workdir")
  s.add_argument("--format", required=True, choices=FORMATS)
  s.add_argument("--checkpoint", required=True)
  s.add_argument("--output", required=True, help="new workdir")
  s.add_argument("--image_size", type=int, default=None,
                 help="image size of the workdir's model (default: the checkpoint's)")
  s.add_argument("--config", default=None,
                 help="recipe of the workdir's config, path[:variant] (default: "
                      "configs/<format>.py:vit_base); the model follows the checkpoint")
  add_heads(s)
  s.add_argument("--decoder_num_heads", type=int, default=None,
                 help="MAE decoder heads (default 16 for the 512-wide decoder)")
  s.set_defaults(run=_official)

  s = sub.add_parser("from-timm", help="timm VisionTransformer state dict -> workdir")
  s.add_argument("--checkpoint", required=True)
  s.add_argument("--output", required=True, help="new workdir")
  s.add_argument("--config", default="configs/mae.py:vit_base",
                 help="recipe (and method) of the workdir's config, path[:variant]; the model "
                      "follows the checkpoint, the method's other parts are initialised")
  s.add_argument("--image_size", type=int, default=None)
  add_heads(s)
  s.set_defaults(run=_from_timm)

  s = sub.add_parser("to-timm", help="workdir's encoder -> timm state dict")
  s.add_argument("--workdir", required=True)
  s.add_argument("--output", required=True, help="*.safetensors, or *.pth (torch.save)")
  s.add_argument("--image_size", type=int, default=None,
                 help="pos_embed grid of the export (default: the image size the run's "
                      "method evaluates its encoder at)")
  s.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  s.add_argument("--use_target", action="store_true", help="export the EMA target encoder")
  s.set_defaults(run=_to_timm)

  s = sub.add_parser("resample-timm", help="resize a timm state dict's pos_embed (bicubic)")
  s.add_argument("--checkpoint", required=True)
  s.add_argument("--image_size", type=int, required=True)
  s.add_argument("--output", required=True)
  s.set_defaults(run=_resample_timm)
  return p


def main(argv=None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  args = parser().parse_args(argv)
  try:
    result = args.run(args)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if result is not None:
    source, config = result
    m = config.model
    print(f"Wrote {args.output}: {source} as method {config.method.name!r}, ViT "
          f"width {m.width}, depth {m.depth}, heads {m.num_heads}, patch {m.patch_size}, "
          f"image {config.data.image_size}. Load it with mim_jax.evaluation.pretrained."
          f"load_encoder({args.output!r}).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
