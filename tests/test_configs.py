"""configs/: one file per method with named variants, the README's config table written
from their docstrings, every variant a config the trainer and its method accept, and
every variant shrunk to test size (config_files.shrink) a traced train step or a
resolved evaluation."""
import json
import os
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from conftest import CIFAR_NPZ, REPO, config_file, shrunk_config
from mim_jax import config_files, defaults, methods, optim, sharding
from mim_jax.evaluation import downstream, run
from mim_jax.tools import aot
from mim_jax.training import config as train_config, state as train_state, train_step

CONFIG_FILES = sorted(p for p in (REPO / "configs").rglob("*.py") if p.name != "common.py")
SPECS = [(path, name) for path in CONFIG_FILES
         for name, _ in config_files.describe(str(path))]
PRETRAINING = [(path, name) for path, name in SPECS if path.parent.name != "eval"]
EVALUATION = [(path, name) for path, name in SPECS if path.parent.name == "eval"]


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
  train_config.check_recipe(config)
  devices = 8 if config.batch_size % 8 == 0 else 1
  train_config.validate(config, devices, 1)
  method = methods.create(config)
  encoder = method.eval_encoder()
  assert encoder.image_size % config.model.patch_size == 0


def abstract_batch(config, method):
  """A full batch of `method.batch_keys` as shapes and dtypes."""
  views = (method.num_views,) if method.num_views > 1 else ()
  lead, size = (config.batch_size,) + views, config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct(lead + (size, size, 3), jnp.float32),
           "crop_box": jax.ShapeDtypeStruct(lead + (4,), jnp.float32),
           "flip": jax.ShapeDtypeStruct(lead, jnp.bool_),
           "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  return {k: batch[k] for k in method.batch_keys}


def abstract_train_step(config):
  """The shapes of a train step of `config` on a full batch (`jax.eval_shape`: traced,
  not compiled): (state before, state after, metrics)."""
  schedule = train_config.schedule(config)
  method = methods.create(config, schedule.total_steps)
  tx = optim.create_optimizer(config, schedule.lr)
  state = train_state.abstract_state(method, tx, config)
  step_fn = train_step.make_train_step(method, tx, schedule.lr, config,
                                       sharding.create_mesh(config))
  return (state,) + jax.eval_shape(step_fn, state, abstract_batch(config, method))


TRACED = {}  # shrunk configs (their epoch counts aside: steps are set) → their step's shapes


@pytest.mark.parametrize("path,name", PRETRAINING, ids=[spec(p, n) for p, n in PRETRAINING])
def test_every_recipe_shrinks_to_a_train_step(path, name):
  """Each recipe at test size (variants that shrink alike are traced once): its method,
  losses, optimizer and schedule kept, validated, built, its train step traced."""
  source = f"{path}:{name}" if name else str(path)
  full, config = config_files.load(source), config_files.shrink(config_files.load(source))
  assert not name or config_files.load(f"{source},shrink") == config
  kept = lambda c: {k: v for k, v in c.method.items() if isinstance(v, (str, bool, float))}
  assert kept(config) == kept(full) and config.optimizer == full.optimizer
  assert (config.model.width, config.model.depth, config.batch_size) == (32, 2, 16)
  assert config.data.source == "synthetic"
  train_config.validate(config, jax.device_count(), 1)
  key = json.dumps({**config.to_dict(), "num_epochs": 0, "warmup_epochs": 0}, default=str,
                   sort_keys=True)
  if key not in TRACED:
    TRACED[key] = abstract_train_step(config)
  state, new_state, metrics = TRACED[key]
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(new_state.params) == shapes(state.params) and "encoder" in state.params
  assert metrics["loss"].shape == ()


# The pretraining recipes (their default variants, shrunk) the evaluation configs resolve
# against: each method declares its own pooling and block for each protocol.
PRETRAINED = [f"{name}.py" for name in methods.METHODS]


@pytest.mark.parametrize("path,name", EVALUATION, ids=[spec(p, n) for p, n in EVALUATION])
def test_every_evaluation_config_shrinks_and_resolves_against_every_method(path, name):
  config = config_files.load(f"{path}:{name},shrink")
  for pretrain_file in PRETRAINED:
    pretrain_config = shrunk_config(pretrain_file)
    if config.features == "streamed":  # a trainer config on the pretrained encoder
      resolved = downstream.resolve_config(config, pretrain_config)
      assert (resolved.model.width, resolved.batch_size, resolved.num_train_steps) == (
          32, 16, 4)
      train_config.validate(resolved, jax.device_count(), 1)
    else:
      method = methods.create(pretrain_config)
      resolved = run.resolve_defaults(config, method)
      encoder = method.eval_encoder(resolved.use_target, resolved.data.image_size)
      assert encoder.image_size == 16  # where the pretraining method evaluates (no gaps)
    assert resolved.pool is not None, pretrain_file


def test_shrink_keeps_the_data_when_asked_and_takes_overrides():
  config = shrunk_config("cae.py", "cifar", keep_data=True, width=64, batch_size=32,
                         **{"optimizer.base_lr": 2e-3})
  assert (config.data.source, config.data.image_size) == ("npz", 32)
  assert (config.model.width, config.model.decoder_width, config.batch_size) == (64, 32, 32)
  assert config.optimizer.base_lr == 2e-3 and config.method.min_block_patches == 5
  latent = shrunk_config("latent_mim.py")  # 4×4 windows of 4 px with a 1 px gap
  assert (latent.method.patch_gap, latent.data.image_size) == (1, 20)
  assert shrunk_config("pcae.py").method.drop_layers == (0, 1)
  assert shrunk_config("simmim.py").method.mask_patch_size == 8
  with pytest.raises(ValueError, match=r"Unknown config variant 'cifar,small'"):
    config_file("mae.py", "cifar,small")


def test_the_cifar_subset_is_found_from_the_repository(monkeypatch, tmp_path):
  path = config_file("mae.py", "cifar").data.path
  if "MIM_JAX_CIFAR10" not in os.environ:
    assert path == os.path.normpath(REPO.parent / "shared" / "data" / "cifar10_small.npz")
  assert path == str(CIFAR_NPZ)
  monkeypatch.chdir(tmp_path)
  assert config_file("mae.py", "cifar").data.path == path
  monkeypatch.setenv("MIM_JAX_CIFAR10", str(tmp_path / "cifar.npz"))
  assert config_file("pcae.py", "cifar").data.path == str(tmp_path / "cifar.npz")


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
  with pytest.raises(ValueError, match=r"choose one of \['cifar', 'vit_base'\]"):
    config_file("multiview_mae.py", "vit_small")


@pytest.mark.parametrize("recipe", sorted(PUBLISHED), ids=lambda r: f"{r[0]}:{r[1]}")
def test_every_published_train_step_exports_for_cuda(recipe):
  """jax.export lowers each published recipe's train step, shrunk (the same ops, optimizer,
  sharding mode and 'xla' attention path at test size), for CUDA on this CPU: no op of the
  step is CPU-only. What only a GPU shows (compiling it, cuDNN attention, its speed):
  README "GPUs"."""
  config = config_file(f"{recipe[0]}.py", f"{recipe[1]},shrink")
  assert config.model.attention_impl == "xla"
  step, state, batch = aot.abstract_train_step(config, sharding.create_mesh(config))
  exported = export.export(step, platforms=["cuda"])(state, batch)
  assert exported.platforms == ("cuda",) and exported.nr_devices == jax.device_count()
  assert len(exported.in_avals) == len(jax.tree.leaves((state, batch)))
  assert [a.shape for a in exported.in_avals] == [
      x.shape for x in jax.tree.leaves((state, batch))]
  assert f"mhlo.num_partitions = {jax.device_count()}" in exported.mlir_module()


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
    train_config.check_recipe(config)


def test_unknown_model_size_is_named():
  from mim_jax import defaults
  with pytest.raises(ValueError, match=r"Unknown ViT size 'gigantic'.*base"):
    defaults.vit_model_config("gigantic")
