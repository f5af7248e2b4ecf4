"""Tests run on the CPU with 8 fake devices (set before jax is imported), sharing one XLA
compilation cache, and the helpers the test files share (a test file imports no other)."""
import contextlib
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run: the pytest-xdist workers and the
# `python -m mim_jax.main` processes the tests start inherit it through the environment, so
# a program that several tests compile (the tiny MAE step, the checkpoint's array copies)
# is compiled once and read back after (jax's own cache: keyed by the program, the devices
# and the compile options). Made fresh for each run and removed after it; a cache directory
# the caller sets in JAX_COMPILATION_CACHE_DIR is used as it is.
OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_COMPILATION_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mim_jax_tests_xla_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Test programs are tiny: XLA's LLVM optimisation passes cost more than they save, so they
# are skipped (jax's own switch, inherited by the processes the tests start).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pathlib  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mim_jax import config_files, data, methods, optim, pretrain, sharding  # noqa: E402
from mim_jax.evaluation import run as evaluation_run  # noqa: E402
from mim_jax.evaluation.pretrained import checkpoint_steps  # noqa: E402,F401
from mim_jax.events import event_tags, scalar_series  # noqa: E402,F401
from mim_jax.training import state as train_state, train_step  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_NPZ = pathlib.Path(config_files.load(str(REPO / "configs" / "mae.py:cifar")).data.path)


def config_file(name, arg=None, overrides=None):
  """configs/<name>'s get_config(arg), with flattened `overrides` ({'model.width': 32})."""
  config = config_files.load(str(REPO / "configs" / name) + ("" if arg is None else f":{arg}"))
  config.update_from_flattened_dict(overrides or {})
  return config


def shrunk_config(name, arg=None, **overrides):
  """configs/<name>'s get_config(arg) at test size: `config_files.shrink` with its
  keywords `overrides` (sizes, steps, batch, keep_data, flattened fields)."""
  return config_files.shrink(config_file(name, arg), **overrides)


def tiny_mae_config(**overrides):
  """MAE's ViT-B recipe (configs/mae.py) shrunk: 16 px synthetic images, a 2-block,
  32-wide encoder (compiles in seconds), decoder 16×1; `overrides` as `shrunk_config`'s."""
  return shrunk_config("mae.py", **overrides)


# The learning checks (tests/methods/): each method's CIFAR-10 recipe (configs/<m>.py:cifar)
# shrunk on its data to LEARNING_SIZES (8 px patches: 16 tokens per image; 600 steps, 60 of
# warmup) with the fields of LEARNING_CHECKS (the recipe's base lr × 4 at this width), the
# loss logged every 10 steps, no image summary, a checkpoint at the end. The k-NN of the
# final encoder (the method's declared feature) must beat the step-0 encoder's by
# KNN_MARGIN points (the measured margins: docs/RESULTS.md, "Learning checks").
LEARNING_SIZES = dict(width=64, depth=2, patch_size=8, batch_size=64, num_train_steps=600,
                      warmup_steps=60)
LEARNING_CHECKS = {
    "mae": {"optimizer.base_lr": 4.8e-3},
    "simmim": {"optimizer.base_lr": 3.2e-3, "method.mask_patch_size": 8},  # one patch: the recipe
    "cae": {"optimizer.base_lr": 3e-3},  # the recipe's alignment weight 0.25 (not 2)
    # a 4×4 grid as the others (40 px with the 2 px gap, 32 px at evaluation), not the
    # recipe's 8×8 that the larger patch would make 80 px; 400 steps
    "latent_mim": {"optimizer.base_lr": 4.8e-3, "data.image_size": 40, "num_train_steps": 400},
    "pcae": {"optimizer.base_lr": 4.8e-3},
    "multiview_mae": {"optimizer.base_lr": 4.8e-3},
}
KNN_MARGIN = 2.0


def learning_config(method, npz):
  """LEARNING_CHECKS[method] on the CIFAR-10 subset at `npz`."""
  return shrunk_config(f"{method}.py", "cifar", keep_data=True,
                       **dict(LEARNING_SIZES, **LEARNING_CHECKS[method]), log_every_steps=10,
                       checkpoint_every_steps=1000, image_summary_every_steps=0,
                       **{"data.path": str(npz)})


def learning_run(method, npz, workdir):
  """The learning check of `method` in `workdir` (a checkpoint of its random encoder at
  step 0, then pretraining on one device: 600 steps of MAE take 21 s, 42 s on the 8 fake
  devices): (config, k-NN top-1 of the step-0 encoder, of the final one), each on the
  method's declared k-NN feature (eval/knn.py: k = 20, cosine; the 10k train images as the
  memory bank, the 2k test images as queries)."""
  config = learning_config(method, npz)
  knn, one_device = [], jax.devices()[:1]
  with xla_optimizations():
    pretrain.run(config, str(workdir), stop_after_step=0, devices=one_device)
    pretrain.run(config, str(workdir), devices=one_device)
    for step in (0, config.num_train_steps):
      eval_config = config_file("eval/knn.py")
      eval_config.update(pretrained=str(workdir), pretrained_step=step, eval_batch_size=512)
      knn.append(evaluation_run.evaluate(eval_config, f"{workdir}/knn_{step}")["knn_top1"])
  return config, knn[0], knn[1]


@contextlib.contextmanager
def xla_optimizations():
  """Programs compiled inside get XLA's optimisations, which the suite otherwise skips
  (JAX_DISABLE_MOST_OPTIMIZATIONS above): 600 steps of MAE's learning check on the 8 fake
  devices took 26.4 s with them, 44.1 s without, compilation included."""
  disabled = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", disabled)


def pytest_unconfigure(config):
  """The process that made the compilation cache (pytest's, or xdist's controller) removes it."""
  del config
  if OWN_COMPILATION_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def cifar_npz():
  if not CIFAR_NPZ.exists():
    pytest.skip(f"{CIFAR_NPZ} not present")
  return CIFAR_NPZ


def random_images(config, seed=0):
  """[config.batch_size, size, size, 3] standard-normal float32 images."""
  size = config.data.image_size
  return np.random.default_rng(seed).normal(size=(config.batch_size, size, size, 3)).astype(
      np.float32)


def run_train_steps(config, devices, batch, num_steps=2, total_steps=10):
  """`num_steps` steps of the generic train step (lr 1e-3, warmup 1 of `total_steps`) on
  a mesh over `devices`, from the state that config.seed initialises. `batch`: images or
  a dict of the method's inputs. Returns (the final state, still sharded, [host state
  before and after each step], [host metrics of each step])."""
  batch = batch if isinstance(batch, dict) else {"image": batch}
  mesh = sharding.create_mesh(config, devices)
  method = methods.create(config, total_steps)
  lr_fn = optim.lr_schedule(1e-3, total_steps=total_steps, warmup_steps=1)
  tx = optim.create_optimizer(config, lr_fn)
  state, shardings = train_state.create_train_state(method, tx, config, mesh)
  step_fn = train_step.jit_train_step(method, tx, lr_fn, config, mesh, shardings)
  global_batch = sharding.global_batch(batch, sharding.batch_sharding(mesh))
  states, metrics = [jax.device_get(state)], []
  for _ in range(num_steps):
    state, step_metrics = step_fn(state, global_batch)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(step_metrics))
  return state, states, metrics


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       atol=atol, rtol=rtol), a, b)


def assert_sharded_equals_one_device(config, batch, metric_keys=("loss",), num_steps=2):
  """The same steps on all 8 devices and on one: `metric_keys` of every step, params and
  EMA targets agree to 1e-5. Set config.optimizer.eps to 1e-6 or more first: the key
  bias of attention has an exactly-zero gradient whose float noise depends on the
  reduction order, and Adam with eps 1e-8 would turn it into ±lr steps. Returns both
  runs as run_train_steps gives them (8 devices first)."""
  assert jax.device_count() == 8
  runs = [run_train_steps(config, devices, batch, num_steps)
          for devices in (jax.devices(), jax.devices()[:1])]
  (_, states8, metrics8), (_, states1, metrics1) = runs
  for key in metric_keys:
    np.testing.assert_allclose([m[key] for m in metrics8], [m[key] for m in metrics1],
                               rtol=1e-5, atol=1e-5, err_msg=key)
  assert_trees_close(states8[-1].params, states1[-1].params)
  assert_trees_close(states8[-1].target_params, states1[-1].target_params)
  return runs


# --- the input pipeline's tests (tests/data/, and methods that read pipeline batches) ----

MEAN = np.array(data.default_data_config().mean, np.float32)
STD = np.array(data.default_data_config().std, np.float32)
ONE_PROCESS = {"process_index": 0, "process_count": 1}


def data_config(**data_fields) -> ml_collections.ConfigDict:
  """A config holding only seed 0 and config.data (32 px images; a synthetic source of 20
  train / 12 eval images) with `data_fields`."""
  config = ml_collections.ConfigDict({"seed": 0, "data": data.default_data_config()})
  config.data.update({"image_size": 32, "synthetic_train_size": 20,
                      "synthetic_eval_size": 12, **data_fields})
  return config


def write_npz(path, train_images, test_images=None):
  """npz whose labels are example ids 0..n-1; the test split defaults to the train one."""
  test_images = train_images if test_images is None else test_images
  np.savez(path, x_train=train_images, y_train=np.arange(len(train_images)),
           x_test=test_images, y_test=np.arange(len(test_images)))
  return str(path)


def uint8_images(n, size=32, seed=0):
  """[n, size, size, 3] uniformly random uint8 images."""
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def normalised(pixels):
  return (np.asarray(pixels, np.float32) / 255.0 - MEAN) / STD


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def coordinate_ramp(size=20):
  """uint8 [size, size, 3]: red = 10·row, green = 10·column, blue = 0."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  return np.stack([10 * rows, 10 * cols, np.zeros_like(rows)], -1).astype(np.uint8)


# --- methods ---------------------------------------------------------------------------

def numpy_mae_loss(pred, images, mask, p, norm_pix):
  """Independent reference: patchify with explicit loops, unbiased variance."""
  b, h, w, c = images.shape
  target = np.zeros((b, (h // p) * (w // p), p * p * c))
  for n in range(b):
    k = 0
    for i in range(h // p):
      for j in range(w // p):
        target[n, k] = images[n, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(-1)
        k += 1
  if norm_pix:
    mu = target.mean(-1, keepdims=True)
    var = ((target - mu) ** 2).sum(-1, keepdims=True) / (target.shape[-1] - 1)
    target = (target - mu) / np.sqrt(var + 1e-6)
  per_patch = ((pred - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()
