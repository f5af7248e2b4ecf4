"""configs/: one file per method with named variants, the README's config table written
from their docstrings, and every variant a config the trainer and its method accept."""
import re

import jax
import pytest

from conftest import REPO, config_file
from mim_jax import config_files, defaults, methods, train

CONFIG_FILES = sorted(p for p in (REPO / "configs").rglob("*.py") if p.name != "common.py")
SPECS = [(path, name) for path in CONFIG_FILES
         for name, _ in config_files.describe(str(path))]


def spec(path, name):
  relative = path.relative_to(REPO).as_posix()
  return f"{relative}:{name}" if name else relative


def test_readme_config_table_is_the_variants_docstrings():
  readme = (REPO / "README.md").read_text()
  rows = dict(re.findall(r"^\| `(configs/[^`]+)` \| (.*) \|$", readme, re.MULTILINE))
  want = {spec(path, name): doc for path in CONFIG_FILES
          for name, doc in config_files.describe(str(path))}
  assert rows == want


@pytest.mark.parametrize("path,name", SPECS, ids=[spec(p, n) for p, n in SPECS])
def test_every_variant_is_a_complete_config(path, name):
  config = config_files.load(str(path) + (f":{name}" if name else ""))
  if "protocol" in config:  # an evaluation config: the pretraining run fills the rest
    assert config.protocol in ("knn", "linear_probe", "attentive_probe", "finetune")
    return
  train.check_recipe(config)
  devices = 8 if config.batch_size % 8 == 0 else 1
  train.validate_config(config, devices, 1)
  method = methods.create(config)
  encoder = method.eval_encoder()
  assert encoder.image_size % config.model.patch_size == 0
  shapes = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                          train.sample_batch(config, method)) if name == "tiny" else None
  assert shapes is None or "encoder" in shapes


# Every published ImageNet recipe (docs/RESULTS.md's pod table): width, depth, patch and
# the published global batch.
PUBLISHED = {("mae", "vit_base"): (768, 12, 16, 4096), ("mae", "vit_large"): (1024, 24, 16, 4096),
             ("mae", "vit_huge"): (1280, 32, 14, 4096), ("simmim", "vit_base"): (768, 12, 16, 2048),
             ("cae", "vit_base"): (768, 12, 16, 2048), ("cae", "vit_large"): (1024, 24, 16, 2048),
             ("latent_mim", "vit_base"): (768, 12, 16, 4096),
             ("latent_mim", "vit_large"): (1024, 24, 16, 4096),
             ("pcae", "vit_base"): (768, 12, 16, 4096), ("pcae", "vit_large"): (1024, 24, 16, 4096),
             ("pcae", "vit_huge"): (1280, 32, 14, 4096),
             ("multiview_mae", "vit_base"): (768, 12, 16, 4096)}


def test_the_published_recipes_and_their_sizes():
  sizes = {(f, v): (c.model.width, c.model.depth, c.model.patch_size, c.batch_size)
           for f, v in PUBLISHED for c in [config_file(f"{f}.py", v)]}
  assert sizes == PUBLISHED
  cae_large = config_file("cae.py", "vit_large")  # scripts/cae_large_1600e.sh
  assert (cae_large.num_epochs, cae_large.warmup_epochs) == (1600, 40)
  assert (cae_large.model.layer_scale_init, cae_large.model.decoder_layer_scale_init) == (
      1e-5, 1e-5)
  assert (cae_large.model.decoder_width, cae_large.model.decoder_num_heads) == (1024, 16)
  assert (cae_large.model.regressor_depth, cae_large.model.decoder_depth) == (4, 4)
  assert config_file("mae.py").model.width == 768  # the default variant is vit_base
  with pytest.raises(ValueError,
                     match=r"choose one of \['cifar', 'tiny', 'tiny_cifar', 'vit_base'"):
    config_file("multiview_mae.py", "vit_small")


def test_the_cifar_variants_share_the_comparisons_encoder_and_run():
  for name in methods.METHODS:
    config = config_file(f"{name}.py", "cifar")
    m = config.model
    assert (m.width, m.depth, m.num_heads, m.patch_size, m.layer_scale_init) == (
        192, 6, 3, 4, None), name
    assert (config.batch_size, config.num_epochs, config.data.source) == (128, 8.0, "npz")
    assert methods.create(config).eval_encoder().grid_hw == (8, 8), name


def test_defaults_hold_no_recipe():
  config = defaults.base_config()
  assert "model" not in config and "method" not in config
  assert config.batch_size is None and config.optimizer.base_lr is None
  with pytest.raises(ValueError, match="config.batch_size, config.optimizer.base_lr, "
                     "config.num_epochs"):
    train.check_recipe(config)


def test_unknown_model_size_is_named():
  from mim_jax import defaults
  with pytest.raises(ValueError, match=r"Unknown ViT size 'gigantic'.*base"):
    defaults.vit_model_config("gigantic")
