"""A method owns its encoder (`Method.eval_encoder`, mim_jax/methods/base.py): every reader
of a trained encoder (the evaluation protocols, the evaluators during training,
fine-tuning's warm start, the timm export, inspection) gets the module, the image size and
grid it is evaluated at, and only the parameters it needs, for every method and for its
EMA target where it keeps one, at the published ViT-B geometry (tiny width and depth; real
image size, patch, gap)."""
import functools
import sys

import jax
import numpy as np
import pytest

from conftest import config_file
from mim_jax import checkpoint, data, methods, optim
from mim_jax.training import state as train_state
from mim_jax.convert import load_torch_state_dict
from mim_jax.convert.__main__ import main as convert_main
from mim_jax.evaluation import features, pretrained, protocols, run
from mim_jax.evaluation.downstream import resolve_config
from mim_jax.evaluation.finetune import FineTune

TINY_MODEL = {"model.width": 16, "model.depth": 1, "model.num_heads": 2,
              "model.decoder_width": 16, "model.decoder_depth": 1, "model.decoder_num_heads": 2}
# (config file, its method-specific tiny overrides)
PUBLISHED = {
    "mae": {},
    "simmim": {},
    "cae": {"model.regressor_depth": 1},
    "latent_mim": {"method.projector_hidden": 32},
    "pcae": {"method.drop_layers": (0,)},
    "multiview_mae": {"method.proj_hidden_dim": 32, "method.proj_dim": 8},
}
# (method, use_target): every method's online encoder, and the EMA targets
ENCODERS = [(name, False) for name in PUBLISHED] + [("latent_mim", True), ("pcae", True)]
SYNTHETIC = {"data.source": "synthetic", "data.num_classes": 4,
             "data.synthetic_train_size": 16, "data.synthetic_eval_size": 8}


def published_config(name, overrides=None):
  """The published ViT-B/16 recipe of `name`, with a 16-wide, 1-deep encoder."""
  return config_file(f"{name}.py", "vit_base",
                     {**TINY_MODEL, **PUBLISHED[name], **(overrides or {})})


@pytest.mark.parametrize("name,use_target", ENCODERS)
def test_eval_encoder_is_the_trained_geometry_at_published_vit_b(name, use_target):
  config = published_config(name)
  method = methods.create(config)
  encoder = method.eval_encoder(use_target)
  # Latent MIM trains on 280 px = 14·(16 + 4) and is evaluated at 14·16 = 224 px
  assert config.data.image_size == (280 if name == "latent_mim" else 224)
  assert (encoder.image_size, encoder.grid_hw, encoder.module.patch_size) == (224, (14, 14), 16)
  assert not encoder.module.use_mask_token
  want_path = {("pcae", True): ("target_params",),
               ("latent_mim", True): ("target_params", "encoder")}
  assert encoder.path == want_path.get((name, use_target), ("params", "encoder"))
  assert encoder.exclude == (("mask_token",) if name == "simmim" else ())
  assert method.eval_encoder(image_size=112).grid_hw == (7, 7)


@pytest.mark.parametrize("name", ["mae", "simmim", "cae", "multiview_mae"])
def test_methods_without_targets_refuse_use_target(name):
  with pytest.raises(ValueError, match="keeps no target"):
    methods.create(published_config(name)).eval_encoder(use_target=True)


def test_latent_mim_target_modes():
  stopgrad = methods.create(published_config("latent_mim", {"method.target_mode": "stopgrad"}))
  with pytest.raises(ValueError, match="target_mode='stopgrad' keeps no target"):
    stopgrad.eval_encoder(use_target=True)
  separate = methods.create(published_config("latent_mim", {"method.target_mode": "separate"}))
  assert separate.eval_encoder(use_target=True).path == ("params", "target", "encoder")


def save_random_run(config, workdir):
  """Checkpoint step 0 of a train state of `config`'s structure (params, EMA targets and
  optimizer state) with every float drawn at random, as the trainer saves one: online and
  target encoders differ in every entry. Returns the state."""
  method = methods.create(config, total_steps=1)
  tx = optim.create_optimizer(config, lambda count: 0.0)
  shapes = jax.eval_shape(functools.partial(train_state.init_state, method, tx),
                          jax.random.PRNGKey(0), train_state.sample_batch(config, method))
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda s: (rng.normal(0.0, 0.1, s.shape).astype(s.dtype)
                                  if np.issubdtype(s.dtype, np.floating)
                                  else np.zeros(s.shape, s.dtype)), shapes)
  checkpoint.write_config(workdir, config)
  manager = checkpoint.create_manager(workdir, config)
  checkpoint.save(manager, 0, state, {"next_element": [0], "skipped_images": [0],
                                      "global_batch_size": config.batch_size})
  manager.wait_until_finished()
  manager.close()
  return state


@pytest.fixture
def reads(monkeypatch):
  """The '/'-joined paths of every array read through checkpoint.restore_subtree."""
  paths = []
  original = checkpoint.restore_subtree

  def spy(workdir, step, abstract):
    paths.extend(optim.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0])
    return original(workdir, step, abstract)
  monkeypatch.setattr(checkpoint, "restore_subtree", spy)
  return paths


@pytest.mark.parametrize("name,use_target", ENCODERS)
def test_every_reader_sees_the_trained_grid_and_reads_only_the_encoder(
    tmp_path, reads, monkeypatch, name, use_target):
  config = published_config(name, SYNTHETIC)
  workdir = str(tmp_path / "run")
  state = save_random_run(config, workdir)
  method = methods.create(config)
  want = method.eval_encoder(use_target).params(state)

  # 1. reading back: only the encoder's arrays, never the optimizer state
  encoder, params, _ = pretrained.load_encoder(workdir, use_target=use_target)
  assert encoder.grid_hw == (14, 14)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  prefix = "/".join(encoder.path) + "/"
  assert reads and all(p.startswith(prefix) for p in reads), reads
  assert len(reads) == len(jax.tree.leaves(want))
  assert not any("mask_token" in p or "opt_state" in p for p in reads)

  # 2. every evaluation protocol plans 224 px images for the 14×14 encoder, whose
  # features have 1 + 196 tokens (the attentive probe's input)
  for protocol in protocols.names("precomputed"):
    eval_config = config_file(f"eval/{protocol}.py", overrides={
        "pretrained": workdir, "use_target": use_target, "eval_batch_size": 8})
    resolved = run.resolve_evaluation(eval_config)
    assert resolved.encoder.grid_hw == (14, 14)
    assert resolved.data_config.data.image_size == 224
  batches = data.create_eval_iterator(resolved.data_config, "validation",
                                      global_batch_size=8)
  tokens, _ = features.extract_features(resolved.encoder.module, params, batches,
                                        pool="tokens")
  assert tokens.shape == (8, 197, 16)
  # ... and a whole evaluation runs on them
  eval_config = config_file("eval/knn.py", overrides={
      "pretrained": workdir, "use_target": use_target, "eval_batch_size": 8})
  metrics = run.evaluate(eval_config, str(tmp_path / "eval"))
  assert metrics["image_size"] == 224 and metrics["num_test"] == 8

  # 3. the timm export: img_size 224, 1 + 196 position rows (SimMIM's published shared
  # relative position bias has no timm equivalent and is refused)
  out = str(tmp_path / "vit.safetensors")
  args = ["to-timm", "--workdir", workdir, "--output", out] + (
      ["--use_target"] if use_target else [])
  if name == "simmim":
    assert convert_main(args) == 2
  else:
    assert convert_main(args) == 0
    assert load_torch_state_dict(out)["pos_embed"].shape == (1, 197, 16)

  # 4. the k-NN evaluator (config.evals.knn) of the online encoder embeds 224 px images
  if not use_target:
    seen = []
    extract = features.extract_features

    def spy(module, params, batches, **kwargs):
      batches = list(batches)
      seen.extend(b["image"].shape for b in batches)
      return extract(module, params, iter(batches), **kwargs)
    monkeypatch.setattr(features, "extract_features", spy)
    config.evals.knn.update(every_steps=1, num_train=16, num_eval=8, batch_size=8)
    (knn_evaluator,) = protocols.during_training(config, method)
    result = knn_evaluator(state, step=0)
    assert 0.0 <= result["knn_top1"] <= 100.0
    assert seen and all(shape[1:] == (224, 224, 3) for shape in seen)


def test_latent_mim_cifar_config_is_evaluated_on_8x8_patches_of_32px(tmp_path):
  config = config_file("latent_mim.py", "cifar", {**TINY_MODEL, **SYNTHETIC,
                                                  "method.projector_hidden": 32})
  assert config.data.image_size == 40  # 8·(4 + 1)
  encoder = methods.create(config).eval_encoder()
  assert (encoder.image_size, encoder.grid_hw) == (32, (8, 8))
  save_random_run(config, str(tmp_path / "run"))
  for protocol in protocols.names("precomputed"):
    eval_config = config_file(f"eval/{protocol}.py", overrides={
        "pretrained": str(tmp_path / "run"), "eval_batch_size": 8})
    assert run.resolve_evaluation(eval_config).data_config.data.image_size == 32


@pytest.mark.parametrize("name,use_target", [("latent_mim", False), ("pcae", True)])
def test_fine_tuning_warm_starts_from_the_eval_encoder_and_reads_only_it(
    tmp_path, reads, name, use_target):
  pretrain_config = published_config(name, SYNTHETIC)
  workdir = str(tmp_path / "run")
  state = save_random_run(pretrain_config, workdir)
  config = config_file("eval/finetune.py", "vit_base", {"pretrained": workdir,
                                                        "use_target": use_target})
  config = resolve_config(config)
  assert config.data.image_size == 224  # Latent MIM: not its 280 px training size
  method = FineTune(config)
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                          train_state.sample_batch(config, method))
  started, _ = method.warm_start(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params),
                                 {})
  want = methods.create(pretrain_config).eval_encoder(use_target).params(state)
  jax.tree.map(np.testing.assert_array_equal,
               {k: v for k, v in started["encoder"].items() if k != "norm"},
               {k: v for k, v in want.items() if k != "norm"})
  prefix = "/".join(method.pretrained_encoder.path) + "/"
  assert reads and all(p.startswith(prefix) for p in reads), reads


# What each method's official code reads for k-NN and the linear probe at ViT-B's depth:
# (pool, block); None = the last block after the final norm.
OFFICIAL_FEATURES = {"mae": ("cls", None), "simmim": ("mean", 8), "cae": ("cls", None),
                     "latent_mim": ("mean", 12), "pcae": ("cls", None),
                     "multiview_mae": ("cls", None)}


@pytest.mark.parametrize("name", PUBLISHED)
def test_each_protocol_reads_the_feature_the_methods_official_code_reads(name):
  pretrain_config = published_config(name, {"model.depth": 12})
  method = methods.create(pretrain_config)
  defaults = method.eval_defaults
  assert defaults.source and set(defaults.reported) <= {"knn", "linear_probe",
                                                        "attentive_probe", "finetune"}
  for protocol, variant in (("knn", None), ("linear_probe", "cifar")):
    config = run.resolve_defaults(config_file(f"eval/{protocol}.py", variant), method)
    assert (config.pool, config.block) == OFFICIAL_FEATURES[name]
  assert run.resolve_defaults(config_file("eval/attentive_probe.py"), method).pool == "tokens"
  mine = run.resolve_defaults(config_file("eval/knn.py", overrides={"pool": "cls",
                                                                    "block": 3}), method)
  assert (mine.pool, mine.block) == ("cls", 3)  # the eval config's own choice wins
  finetune = resolve_config(config_file("eval/finetune.py", "vit_base"), pretrain_config)
  assert finetune.pool == "mean"  # every official fine-tuning pools the patch tokens
  probe = resolve_config(config_file("eval/linear_probe.py", "published"), pretrain_config)
  assert (probe.pool, probe.block) == OFFICIAL_FEATURES[name]
  # A fraction of the depth: SimMIM's block 8 of 12 is block 4 of a 6-deep encoder.
  assert defaults.block(6) == {"simmim": 4, "latent_mim": 6}.get(name)


def test_reading_a_received_run_imports_nothing_its_config_names(tmp_path, monkeypatch):
  """A config.json is data: evaluation, export and inspection of a run whose config names
  a CAE tokenizer module never import it; only a training run of that config does."""
  config = published_config("cae", SYNTHETIC)
  workdir = str(tmp_path / "run")
  save_random_run(config, workdir)
  marker = tmp_path / "imported"
  (tmp_path / "evil_tokenizer.py").write_text(
      f"open({str(marker)!r}, 'w').close()\n\ndef tokenize(images):\n  raise AssertionError\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  received = config.copy_and_resolve_references()
  received.method.update(target="tokenizer", tokenizer="evil_tokenizer:tokenize",
                         vocab_size=16 * 16 * 3)  # the decoder head keeps its shape
  checkpoint.write_config(workdir, received)
  pretrained.load_encoder(workdir)
  pretrained.load_params(workdir)  # inspection
  run.evaluate(config_file("eval/knn.py", overrides={"pretrained": workdir,
                                                     "eval_batch_size": 8}),
               str(tmp_path / "eval"))
  assert convert_main(["to-timm", "--workdir", workdir, "--output",
                       str(tmp_path / "vit.safetensors")]) == 0
  assert not marker.exists()
  methods.create(received, total_steps=10)  # a training run of it
  assert marker.exists()
  monkeypatch.delitem(sys.modules, "evil_tokenizer")
