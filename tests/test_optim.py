import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import config_file
from mim_jax import defaults, methods, optim
from mim_jax.training import state as train_state
from mim_jax.evaluation import finetune
from mim_jax.models import vit


def test_lr_scaling_rules():
  assert optim.scaled_lr(1.5e-4, "linear_256", 4096) == pytest.approx(2.4e-3)
  assert optim.scaled_lr(1e-4, "linear_512", 2048) == pytest.approx(4e-4)
  assert optim.scaled_lr(1.5e-3, "absolute", 2048) == pytest.approx(1.5e-3)
  with pytest.raises(ValueError, match="lr_scaling"):
    optim.scaled_lr(1.0, "sqrt", 256)


def test_warmup_cosine_schedule_values():
  lr = optim.lr_schedule(1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
  assert float(lr(110)) == pytest.approx(0.1)
  assert float(lr(500)) == pytest.approx(0.1)


def test_steps_from_epochs():
  assert optim.steps_from_epochs(-1, 2.5, 100) == 250
  assert optim.steps_from_epochs(7, 2.5, 100) == 7


def test_cosine_momentum_schedule():
  assert float(optim.cosine_momentum(0, 100, 0.99)) == pytest.approx(0.99)
  assert float(optim.cosine_momentum(50, 100, 0.99)) == pytest.approx(0.995)
  assert float(optim.cosine_momentum(100, 100, 0.99)) == pytest.approx(1.0)


def test_global_norm_is_the_tree_norm_with_one_reduction_per_matrix_and_vector_shape():
  rng = np.random.default_rng(0)
  tree = {"kernels": [rng.normal(size=(8, 24)).astype(np.float32) for _ in range(3)],
          "biases": [rng.normal(size=(24,)).astype(np.float32) for _ in range(4)],
          "scale": rng.normal(size=(8,)).astype(np.float32), "count": np.float32(3.0)}
  by_hand = np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64)))
                        for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(optim.global_norm(tree), by_hand, rtol=1e-6)
  np.testing.assert_allclose(optim.global_norm(tree), optax.tree.norm(tree), rtol=1e-6)
  jaxpr = jax.make_jaxpr(optim.global_norm)(tree).jaxpr
  # 3 matrices, then 1 group each for the 4 biases, the scale and the scalar
  assert [e.primitive.name for e in jaxpr.eqns].count("reduce_sum") == 6


def test_default_weight_decay_mask():
  params = {"encoder": {"cls_token": jnp.zeros((1, 1, 4)), "patch_embed": {
      "kernel": jnp.zeros((8, 4)), "bias": jnp.zeros(4)}, "norm": {"scale": jnp.ones(4),
      "bias": jnp.zeros(4)}, "blocks_0": {"gamma_1": jnp.ones(4)},
      "blocks": {"layers": {"norm1": {"scale": jnp.ones((2, 4))},  # scanned: [depth, ...]
                            "mlp": {"fc1": {"kernel": jnp.ones((2, 4, 8))}}}}},
      "decoder": {"mask_token": jnp.zeros((1, 1, 4)), "decoder_pred": {"kernel": jnp.ones((4, 2))}}}
  mask = optim.decay_mask(params)
  assert mask["encoder"]["patch_embed"] == {"kernel": True, "bias": False}
  assert mask["decoder"]["decoder_pred"]["kernel"] is True
  assert mask["encoder"]["cls_token"] and mask["decoder"]["mask_token"]  # as timm's rule
  assert mask["encoder"]["norm"] == {"scale": False, "bias": False}
  assert mask["encoder"]["blocks_0"]["gamma_1"] is False
  assert mask["encoder"]["blocks"]["layers"]["norm1"]["scale"] is False
  assert mask["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"] is True
  extra = optim.decay_mask(params, (r"(^|/)cls_token$", r"embed"))
  assert not extra["encoder"]["cls_token"] and not extra["encoder"]["patch_embed"]["kernel"]
  assert extra["decoder"]["mask_token"]


def test_adamw_applies_decay_only_where_masked():
  config = defaults.base_config()
  config.optimizer.update(weight_decay=0.5, grad_clip=0.0)
  tx = optim.create_optimizer(config, lambda step: 0.1)
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  grads = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)  # decoupled decay
  np.testing.assert_allclose(new["dense"]["bias"], 1.0)


def test_gradient_clipping_by_global_norm():
  config = defaults.base_config()
  config.optimizer.update(weight_decay=0.0, grad_clip=1.0, b1=0.9)
  tx = optim.create_optimizer(config, lambda step: 1.0)
  params = {"w": jnp.zeros(2)}
  _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  mu = optax.tree_utils.tree_get(state, "mu")  # Adam's first moment = (1 − b1)·clipped grad
  np.testing.assert_allclose(mu["w"], 0.1 * np.array([0.6, 0.8]), rtol=1e-5)


@pytest.mark.parametrize("name", ["adamw", "lars"])
def test_a_bfloat16_first_moment_holds_the_momentum_rounded(name):
  """optimizer.mu_dtype: AdamW's first moment (its second stays float32) or LARS's momentum
  in bfloat16: (1 − b1)·g for Adam, g for LARS' trace after one step, rounded to bf16."""
  config = defaults.base_config()
  config.optimizer.update(name=name, mu_dtype="bfloat16", weight_decay=0.0)
  tx = optim.create_optimizer(config, lambda step: 0.1)
  params = {"w": jnp.ones(3)}  # 1-D: no weight decay, no trust ratio (decay_mask)
  grad = {"w": jnp.full(3, 1.0 / 3.0)}
  _, state = tx.update(grad, tx.init(params), params)
  mu = optax.tree_utils.tree_get(state, "mu" if name == "adamw" else "trace")
  assert mu["w"].dtype == jnp.bfloat16
  want = (0.1 if name == "adamw" else 1.0) / 3.0
  np.testing.assert_array_equal(mu["w"], jnp.full(3, want, jnp.bfloat16))
  if name == "adamw":
    assert optax.tree_utils.tree_get(state, "nu")["w"].dtype == jnp.float32
  config.optimizer.mu_dtype = "float16"
  with pytest.raises(ValueError, match="config.optimizer.mu_dtype='float16'"):
    optim.create_optimizer(config, lambda step: 0.1)


def test_multistep_schedule_values():
  lr = optim.lr_schedule(1.0, total_steps=100, warmup_steps=10, schedule="multistep",
                         decay_steps=(70, 90), decay_rate=0.1)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0) and float(lr(69)) == pytest.approx(1.0)
  assert float(lr(70)) == pytest.approx(0.1) and float(lr(89)) == pytest.approx(0.1)
  assert float(lr(90)) == pytest.approx(0.01) and float(lr(500)) == pytest.approx(0.01)
  with pytest.raises(ValueError, match="warmup"):
    optim.lr_schedule(1.0, 100, 10, schedule="multistep", decay_steps=(5,))
  with pytest.raises(ValueError, match="schedule"):
    optim.lr_schedule(1.0, 100, 10, schedule="linear")


def test_schedule_from_config_milestones_in_epochs_or_steps():
  config = defaults.base_config()
  assert float(optim.lr_schedule_from_config(config, 1.0, 110, 10, 5)(60)) == pytest.approx(
      0.5)  # default: the cosine
  config.optimizer.update(schedule="multistep", decay_epochs=(7.0,), decay_rate=0.5)
  lr = optim.lr_schedule_from_config(config, 2.0, 100, 10, steps_per_epoch=10)
  assert float(lr(69)) == pytest.approx(2.0) and float(lr(70)) == pytest.approx(1.0)
  config.optimizer.decay_steps = (30,)
  lr = optim.lr_schedule_from_config(config, 2.0, 100, 10, steps_per_epoch=10)
  assert float(lr(29)) == pytest.approx(2.0) and float(lr(30)) == pytest.approx(1.0)


def closed_form_lr(step, peak_lr, total_steps, warmup_steps, min_lr=0.0, schedule="cosine",
                   decay_steps=(), decay_rate=0.1, warmup_start_ratio=0.0):
  """The schedule written out in float64: linear warmup over steps [0, warmup_steps), then
  a half-cosine over max(total − warmup, 1) steps held at min_lr after it, or the peak
  times decay_rate per milestone ≤ step."""
  step = np.asarray(step, np.float64)
  start = warmup_start_ratio * peak_lr
  warm = start + (peak_lr - start) * step / max(warmup_steps, 1)
  if schedule == "multistep":
    after = peak_lr * decay_rate ** np.sum(np.asarray(decay_steps)[:, None] <= step, axis=0)
  else:
    progress = np.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    after = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + np.cos(np.pi * progress))
  return np.where(step < warmup_steps, warm, after)


SCHEDULE_CASES = [
    dict(peak_lr=1.0, total_steps=110, warmup_steps=10),
    dict(peak_lr=2.4e-3, total_steps=100, warmup_steps=0),  # no warmup
    dict(peak_lr=1.5e-4, total_steps=20, warmup_steps=20, min_lr=1e-6),  # warmup == total
    dict(peak_lr=1.5e-4, total_steps=10, warmup_steps=20, min_lr=1e-6),  # warmup > total
    dict(peak_lr=0.5, total_steps=1, warmup_steps=0, min_lr=0.1),
    dict(peak_lr=0.5, total_steps=0, warmup_steps=0, min_lr=0.1),
    dict(peak_lr=3.0, total_steps=1000, warmup_steps=37, min_lr=0.3),
    dict(peak_lr=2.0, total_steps=110, warmup_steps=10, min_lr=0.5, warmup_start_ratio=0.25),
    dict(peak_lr=2.0, total_steps=110, warmup_steps=10, warmup_start_ratio=1.0),
    dict(peak_lr=1.5e-4, total_steps=800 * 1250, warmup_steps=40 * 1250, min_lr=1e-6),
    dict(peak_lr=1.0, total_steps=100, warmup_steps=10, schedule="multistep",
         decay_steps=(70, 90)),
    dict(peak_lr=4e-4, total_steps=8000, warmup_steps=100, schedule="multistep",
         decay_steps=(7000,), warmup_start_ratio=0.005),  # SimMIM: from 5e-7 per 512 images
    dict(peak_lr=4e-4, total_steps=100, warmup_steps=10, schedule="multistep",
         decay_steps=(90, 10, 50, 50), decay_rate=0.5),  # unsorted, at warmup's end, repeated
    dict(peak_lr=1.0, total_steps=100, warmup_steps=0, schedule="multistep",
         decay_steps=(0,)),
    dict(peak_lr=1.0, total_steps=100, warmup_steps=10, schedule="multistep"),
    dict(peak_lr=1.0, total_steps=100, warmup_steps=10, schedule="multistep",
         decay_steps=(200,), warmup_start_ratio=0.25),  # a milestone after the end
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=str)
def test_lr_schedule_equals_its_closed_form(case):
  """Every step of the warmup, its end, the whole decay, the total and well past it."""
  t, w = case["total_steps"], case["warmup_steps"]
  steps = np.unique(np.concatenate([np.arange(min(max(t, w) + 5, 5000)),
                                    np.linspace(0, max(t, w) + 5, 2001).astype(int),
                                    [w - 1, w, w + 1, t - 1, t, t + 1, 10**7]]))
  steps = steps[steps >= 0].astype(np.int32)
  got = np.asarray(jax.jit(jax.vmap(optim.lr_schedule(**case)))(steps))
  want = closed_form_lr(steps, **case)
  assert got.dtype == np.float32
  relative = (steps < w) | (case.get("schedule") == "multistep")
  np.testing.assert_allclose(got[relative], want[relative], rtol=1e-6)
  # float32: the cosine's small values near its end carry ulps of the peak (cos(π·t) ≈ −1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=2**-22 * case["peak_lr"])


def test_lr_schedule_from_config_equals_the_closed_form():
  """min_lr = max(min_lr, min_lr_ratio·peak); milestones in epochs × steps per epoch."""
  config = defaults.base_config()
  config.optimizer.update(min_lr=1e-6, min_lr_ratio=0.25, warmup_start_ratio=0.25)
  steps = np.arange(0, 130)
  got = optim.lr_schedule_from_config(config, 2.0, 110, 10, steps_per_epoch=5)(steps)
  want = closed_form_lr(steps, 2.0, 110, 10, min_lr=0.5, warmup_start_ratio=0.25)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=2**-22 * 2.0)
  config.optimizer.update(schedule="multistep", decay_epochs=(7.0, 9.5), decay_rate=0.5)
  got = optim.lr_schedule_from_config(config, 2.0, 110, 10, steps_per_epoch=10)(steps)
  want = closed_form_lr(steps, 2.0, 110, 10, schedule="multistep", decay_steps=(70, 95),
                        decay_rate=0.5, warmup_start_ratio=0.25)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=2**-22 * 2.0)


# Each official code's weight-decay rule, written out over its torch parameter names
# (our '/'-joined paths read the same way: biases end in 'bias', LayerNorm scales and
# LayerScale gammas are 1-D):
def timm_add_weight_decay(name, shape):
  """mae/main_pretrain.py (timm `add_weight_decay`, no skip list); caddyless/PCAE
  main_pretrain.py; CAE furnace/optim_factory.py `get_parameter_groups` (its model has no
  `no_weight_decay`)."""
  return len(shape) == 1 or name.endswith("bias")


OFFICIAL_NO_DECAY = {
    "mae": timm_add_weight_decay,
    "pcae": timm_add_weight_decay,
    "cae": timm_add_weight_decay,
    "multiview_mae": timm_add_weight_decay,  # no public code: MAE's optimizer
    # SimMIM optimizer.py `get_pretrain_param_groups` with the ViT's no_weight_decay()
    # = {'encoder.pos_embed', 'encoder.cls_token'} (no keywords for the ViT)
    "simmim": lambda name, shape: (timm_add_weight_decay(name, shape) or
                                   name in ("encoder/cls_token", "encoder/pos_embed")),
    # LatentMIM main_lmim.py: no_weight_decay_list = names with 'bias', 'norm' or 'embed'
    "latent_mim": lambda name, shape: (timm_add_weight_decay(name, shape) or any(
        word in name for word in ("bias", "norm", "embed"))),
}



def no_decay_leaves(params, config):
  mask = optim.decay_mask(params, config.optimizer.no_decay_patterns)
  return {optim.path_name(p) for p, decays in
          jax.tree_util.tree_flatten_with_path(mask)[0] if not decays}


@pytest.mark.parametrize("name", sorted(OFFICIAL_NO_DECAY))
def test_weight_decay_follows_each_official_optimizer(name):
  extra = {"pcae": {"method.drop_layers": (0,)}, "cae": {"model.regressor_depth": 1}}
  config = config_file(f"{name}.py", "vit_base", overrides={
      "model.depth": 2, "model.width": 32, "model.num_heads": 2, "model.decoder_depth": 1,
      **extra.get(name, {})})
  method = methods.create(config)
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                          train_state.sample_batch(config, method))
  official = {optim.path_name(p) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if OFFICIAL_NO_DECAY[name](optim.path_name(p), leaf.shape)}
  assert no_decay_leaves(params, config) == official
  # what the rules mean, spelled out: tokens are decayed unless the method skips them
  assert ("encoder/cls_token" in official) == (name == "simmim")
  assert "encoder/patch_embed/bias" in official
  assert ("encoder/patch_embed/kernel" in official) == (name == "latent_mim")
  if name == "latent_mim":
    assert "decoder/decoder_embed/kernel" in official
    assert "decoder/mask_token" not in official and "decoder/cls_token" not in official


def test_fine_tuning_weight_decay_is_maes_param_groups_lrd():
  """mae/util/lr_decay.py `param_groups_lrd`: no decay where p.ndim == 1 or the name is in
  timm ViT's no_weight_decay() = {pos_embed, cls_token, dist_token}."""
  config = config_file("eval/finetune.py", "vit_base")
  params = {"encoder": {"cls_token": jnp.zeros((1, 1, 8)), "patch_embed": {
      "kernel": jnp.zeros((48, 8)), "bias": jnp.zeros(8)}, "blocks_0": {
      "attn": {"qkv": {"kernel": jnp.zeros((8, 24)), "bias": jnp.zeros(24)}},
      "norm1": {"scale": jnp.ones(8)}}},
      "fc_norm": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
      "head": {"kernel": jnp.zeros((8, 10)), "bias": jnp.zeros(10)}}
  assert no_decay_leaves(params, config) == {
      "encoder/cls_token", "encoder/patch_embed/bias", "encoder/blocks_0/attn/qkv/bias",
      "encoder/blocks_0/norm1/scale", "fc_norm/scale", "fc_norm/bias", "head/bias"}


def test_warmup_from_a_fraction_of_the_peak_then_cosine_to_the_floor():
  """LatentMIM util/lr_sched.py `adjust_learning_rate` with min_lr = 0.25·lr: the warmup
  rises linearly from min_lr to lr, then a half-cosine falls back to min_lr."""
  peak, warmup, total = 2.0, 10, 110
  lr = optim.lr_schedule(peak, total, warmup, min_lr=0.25 * peak, warmup_start_ratio=0.25)
  for step in (0, 3, 9):
    assert float(lr(step)) == pytest.approx(0.5 + 1.5 * step / warmup)
  for step in (10, 35, 60, 110):
    want = 0.5 + 1.5 * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))
    assert float(lr(step)) == pytest.approx(want)
  with pytest.raises(ValueError, match="warmup_start_ratio"):
    optim.lr_schedule(peak, total, warmup, warmup_start_ratio=1.5)
  for arg in ("vit_base", "vit_large"):
    opt = config_file("latent_mim.py", arg).optimizer
    assert (opt.warmup_start_ratio, opt.min_lr_ratio) == (0.25, 0.25)
  assert config_file("latent_mim.py", "cifar").optimizer.warmup_start_ratio == 0.25
  assert config_file("mae.py", "vit_base").optimizer.warmup_start_ratio == 0.0
  # the trainer's schedule reads the field
  config = config_file("latent_mim.py", "cifar")
  from_config = optim.lr_schedule_from_config(config, peak, total, warmup, steps_per_epoch=1)
  assert float(from_config(0)) == pytest.approx(0.5)


def test_layer_decay_multipliers_equal_the_closed_form():
  encoder = vit.ViTEncoder(image_size=8, patch_size=4, width=8, depth=3, num_heads=2)
  classifier = finetune.ViTClassifier(encoder, num_classes=5)
  params = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 8, 8, 3)))["params"])
  params = {**params, "rel_pos_bias": {"relative_position_bias_table": jnp.zeros((3, 2))}}
  scales = optim.layer_decay_multipliers(params, 0.65, depth=3)
  d = 0.65
  expected = {  # decay^(depth + 1 - layer id): embeddings 0, block i -> i + 1, rest 4
      ("encoder", "patch_embed", "kernel"): d**4, ("encoder", "cls_token"): d**4,
      ("encoder", "blocks_0", "attn", "qkv", "kernel"): d**3,
      ("encoder", "blocks_1", "norm1", "bias"): d**2,
      ("encoder", "blocks_2", "mlp", "fc2", "kernel"): d**1,
      ("fc_norm", "scale"): 1.0, ("head", "kernel"): 1.0, ("head", "bias"): 1.0,
      ("rel_pos_bias", "relative_position_bias_table"): 1.0}
  for path, value in expected.items():
    leaf = scales
    for key in path:
      leaf = leaf[key]
    assert leaf == pytest.approx(value), path
  assert "norm" not in params["encoder"]  # mean pooling replaces the final norm by fc_norm
  scanned = {"encoder": {"blocks": {"layers": {"mlp": {"fc1": {
      "kernel": jnp.zeros((3, 8, 32)), "bias": jnp.zeros((3, 32))}}}}}}  # scan_layers
  scanned = optim.layer_decay_multipliers(scanned, d, depth=3)["encoder"]["blocks"]["layers"]
  np.testing.assert_allclose(scanned["mlp"]["fc1"]["kernel"][:, 0, 0], [d**3, d**2, d])
  assert scanned["mlp"]["fc1"]["bias"].shape == (3, 1)

  # the optimizer applies them: AdamW's first update scaled per layer
  config = ml_collections.ConfigDict({"optimizer": defaults.base_config().optimizer,
                                      "model": {"depth": 3}})
  grads = jax.tree.map(lambda x: jnp.ones(x.shape), params)
  values = jax.tree.map(lambda x: jnp.full(x.shape, 0.5), params)
  plain = optim.create_optimizer(config, 1e-2)
  config.optimizer.layer_decay = d
  decayed = optim.create_optimizer(config, 1e-2)
  ref, _ = jax.jit(plain.update)(grads, plain.init(values), values)
  out, _ = jax.jit(decayed.update)(grads, decayed.init(values), values)
  jax.tree.map(lambda o, r, s: np.testing.assert_allclose(o, r * s, rtol=1e-6), out, ref,
               scales)


def test_lars_is_maes_lars_with_a_changing_lr():
  """config.optimizer.name='lars' against a NumPy transcription of mae/util/lars.py: the
  trust ratio and weight decay on matrices only, μ ← 0.9·μ + d, p ← p − lr·μ, over steps
  whose lr changes (optax.lars would put the lr inside μ)."""
  config = defaults.base_config()
  config.optimizer.update(name="lars", weight_decay=0.05, momentum=0.9)
  lrs = [0.5, 2.0, 1.0, 0.25]
  tx = optim.create_optimizer(config, lambda count: jnp.asarray(lrs)[count])
  rng = np.random.default_rng(0)
  params = {"head": {"kernel": rng.normal(size=(6, 3)).astype(np.float32),
                     "bias": rng.normal(size=3).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in lrs]
  state = tx.init(params)
  ours = params
  for g in grads:
    updates, state = tx.update(g, state, ours)
    ours = optax.apply_updates(ours, updates)

  theirs = {k: v.astype(np.float64) for k, v in params["head"].items()}
  mu = {k: np.zeros_like(v) for k, v in theirs.items()}
  for lr, g in zip(lrs, grads):
    for name, p in theirs.items():
      d = g["head"][name].astype(np.float64)
      if p.ndim > 1:  # lars.py: "if not normalization gamma/beta or bias"
        d = d + 0.05 * p
        p_norm, d_norm = np.linalg.norm(p), np.linalg.norm(d)
        d = d * (0.001 * p_norm / d_norm if p_norm > 0 and d_norm > 0 else 1.0)
      mu[name] = 0.9 * mu[name] + d
      theirs[name] = p - lr * mu[name]
  for name in theirs:
    np.testing.assert_allclose(np.asarray(ours["head"][name]), theirs[name], rtol=1e-5,
                               atol=1e-6)
  with pytest.raises(ValueError, match="config.optimizer.name"):
    config.optimizer.name = "sgd"
    optim.create_optimizer(config, lambda count: 0.1)
