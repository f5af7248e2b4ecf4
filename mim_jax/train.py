"""The generic pretraining loop: one trainer for every method in mim_jax/methods/.

A step (`make_train_step`):
  1. EMA targets: target = m·target + (1 − m)·source(params) with the method's per-step
     momentum m, applied *before* the loss so that targets are computed with the updated
     weights (yibingwei-1/LatentMIM; m = 0 copies the online weights as CAE does).
  2. Masks from `method.make_masks` with a key folded from (seed, step, micro-batch).
  3. Loss and gradients w.r.t. the online params only (targets under stop-gradient),
     averaged over `config.grad_accum_steps` micro-batches with `lax.scan`.
  4. AdamW or LARS (optionally after global-norm clipping) with the warmup + cosine (or
     multistep) lr; target params that the loss itself updates (`TARGET_UPDATES`, e.g.
     BatchNorm statistics) are stored with the update.
"""
import contextlib
import functools
import signal
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mim_jax import checkpoint, data, events, lock, optim, preemption, sharding
from mim_jax.methods.base import TARGET_UPDATES, Method
from mim_jax.models import vit
from mim_jax.state import TrainState

PyTree = Any


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    process_count: int) -> None:
  """Errors a user can cause in the trainer's fields, raised before anything is compiled
  (a method checks its own fields when it is built)."""
  check_recipe(config)
  model = config.model
  if model.width % model.num_heads or model.width % 4:
    raise ValueError(f"config.model.width={model.width} must be divisible by 4 (sin-cos "
                     f"position embedding) and by config.model.num_heads={model.num_heads}.")
  validate_speed_options(model)
  accum = config.grad_accum_steps
  if accum < 1 or config.batch_size % accum:
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of "
                     f"config.grad_accum_steps={accum} (>= 1).")
  data.check_config(config)
  data.check_batch_size(config.batch_size, num_devices, process_count)
  if (config.batch_size // accum) % num_devices:
    raise ValueError(f"Each micro-batch of config.batch_size / config.grad_accum_steps = "
                     f"{config.batch_size // accum} images must divide over {num_devices} "
                     f"devices; change config.batch_size or config.grad_accum_steps.")


def validate_speed_options(model: ml_collections.ConfigDict) -> None:
  """config.model.dtype, remat, attention_impl and scan_layers (mim_jax/models/vit.py)."""
  if model.dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"config.model.dtype={model.dtype!r}: choose 'float32', 'bfloat16' or "
                     f"'float16' (the compute dtype; params stay float32).")
  vit.remat_policy_name(model.get("remat", False))
  impl = model.get("attention_impl", "xla")
  if impl not in vit.ATTENTION_IMPLS:
    raise ValueError(f"Unknown config.model.attention_impl={impl!r}; choose one of "
                     f"{vit.ATTENTION_IMPLS}.")
  if impl == "cudnn" and (jax.default_backend() != "gpu" or model.dtype == "float32"):
    raise ValueError(f"config.model.attention_impl='cudnn' needs a GPU and "
                     f"config.model.dtype 'bfloat16' or 'float16' (have "
                     f"{jax.default_backend()}, {model.dtype!r}); use 'xla'.")
  if not isinstance(model.get("scan_layers", False), bool):
    raise ValueError(f"config.model.scan_layers={model.scan_layers!r} must be True or False.")


def check_recipe(config: ml_collections.ConfigDict) -> None:
  """The fields a recipe must set (defaults.base_config leaves them None)."""
  missing = [f"config.{name}" for name, value in (
      ("batch_size", config.batch_size), ("optimizer.base_lr", config.optimizer.base_lr))
             if value is None]
  if config.num_train_steps < 0 and config.get("num_epochs") is None:
    missing.append("config.num_epochs (or config.num_train_steps)")
  if missing:
    raise ValueError(f"{', '.join(missing)} not set: start from a config file in configs/ "
                     "(e.g. --config=configs/mae.py:vit_base) or set them.")


def schedule_lengths(config) -> Tuple[int, int, int]:
  """(total_steps, warmup_steps, steps_per_epoch) from steps or epochs in the config."""
  check_recipe(config)
  steps_per_epoch = max(data.num_examples(config, config.data.train_split) // config.batch_size,
                        1)
  total = optim.steps_from_epochs(config.num_train_steps, config.num_epochs, steps_per_epoch)
  warmup = optim.steps_from_epochs(config.warmup_steps, config.warmup_epochs, steps_per_epoch)
  return total, warmup, steps_per_epoch


def init_state(method: Method, tx: optax.GradientTransformation, rng: jax.Array,
               sample_batch: PyTree) -> TrainState:
  param_rng, state_rng = jax.random.split(rng)
  params = method.init(param_rng, sample_batch)
  target_params = method.init_targets(jax.random.fold_in(param_rng, 1), sample_batch, params)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, target_params=target_params,
                    opt_state=tx.init(params), rng=state_rng, skipped_steps=zero,
                    nonfinite_streak=zero)


def sample_batch(config, method: Method) -> Dict[str, jax.Array]:
  """A one-image batch of the shape the method trains on (for initialisation)."""
  image_shape = (config.data.image_size, config.data.image_size, 3)
  if method.num_views > 1:
    image_shape = (method.num_views,) + image_shape
  return {"image": jnp.zeros((1,) + image_shape, jnp.float32)}


def create_train_state(method, tx, config, mesh, sample_batch):
  """Initialise the state directly into its shardings. Returns (state, shardings)."""
  init_fn = functools.partial(init_state, method, tx)
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init_fn, rng, sample_batch)
  shardings = sharding.state_shardings(mesh, abstract, config)
  state = jax.jit(init_fn, out_shardings=shardings)(rng, sample_batch)
  return state, shardings


def ema_update(target_params: PyTree, source: PyTree, momentum: jax.Array) -> PyTree:
  return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, target_params, source)


def make_train_step(method: Method, tx: optax.GradientTransformation, lr_fn: Callable,
                    config, total_steps: int, mesh) -> Callable:
  accum = config.grad_accum_steps
  micro_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))

  def train_step(state: TrainState, batch: PyTree) -> Tuple[TrainState, Dict[str, jax.Array]]:
    step = state.step
    rng = jax.random.fold_in(state.rng, step)
    metrics = {}
    target_params = state.target_params
    source = method.target_source(state.params)
    if source is not None:
      momentum = method.target_momentum(step, total_steps)
      target_params = ema_update(target_params, source, momentum)
      metrics["target_momentum"] = momentum
    frozen_targets = jax.lax.stop_gradient(target_params)

    def loss_fn(params, micro_batch, micro_rng):
      mask_rng, loss_rng = jax.random.split(micro_rng)
      masks = method.make_masks(mask_rng, micro_batch)
      return method.loss(params, frozen_targets, micro_batch, masks, loss_rng, step)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (loss, aux), grads = grad_fn(state.params, batch, rng)
    else:
      # [B, ...] -> [A, B/A, ...]; micro-batch i holds examples i, i + A, ... so that each
      # device keeps its own examples.
      micro = jax.tree.map(
          lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1),
          batch)
      micro = jax.lax.with_sharding_constraint(
          micro, jax.tree.map(lambda _: micro_sharding, micro))

      def accumulate(carry, inputs):
        index, micro_batch = inputs
        out = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, out), None

      zeros = jax.tree.map(jnp.zeros_like,
                           jax.eval_shape(grad_fn, state.params,
                                          jax.tree.map(lambda x: x[0], micro), rng))
      summed, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
      (loss, aux), grads = jax.tree.map(lambda x: x / accum, summed)
    target_updates = aux.pop(TARGET_UPDATES, {})

    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient skips the update: everything but the step stays. A cond,
    # not a select over every leaf: the update then runs in place on the donated state
    # instead of keeping the old one beside it (on the CPU, 7% of an MAE ViT-B step).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return (optax.apply_updates(state.params, updates), opt_state,
              {**target_params, **target_updates})

    params, opt_state, target_params = jax.lax.cond(
        finite, update, lambda _: (state.params, state.opt_state, state.target_params), None)
    bad = 1 - finite.astype(jnp.int32)
    new_state = state.replace(step=step + 1, params=params, target_params=target_params,
                              opt_state=opt_state, skipped_steps=state.skipped_steps + bad,
                              nonfinite_streak=(state.nonfinite_streak + 1) * bad)
    metrics.update(aux)
    metrics.update(loss=loss, grad_norm=grad_norm, lr=lr_fn(step),
                   skipped_steps=new_state.skipped_steps,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics

  return train_step


def jit_train_step(method, tx, lr_fn, config, total_steps, mesh, state_shardings) -> Callable:
  """The train step compiled for the mesh. With `config.donate_state` (default) the input
  state's buffers are reused for the output state: the caller must not read the state it
  passed in after the call (keep only the returned one)."""
  return jax.jit(
      make_train_step(method, tx, lr_fn, config, total_steps, mesh),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,) if config.get("donate_state", True) else ())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, method: Method,
                       stop_after_step: Optional[int] = None, *,
                       evaluations: Sequence[Callable] = (),
                       description: Optional[str] = None) -> TrainState:
  """Train `method` (built from `config`, e.g. `methods.create`; fine-tuning:
  mim_jax/evaluation/finetune.py) and write checkpoints and metrics under `workdir`.

  Resumes from the latest checkpoint in `workdir`; a fresh start takes its params from
  `method.warm_start`. `stop_after_step` ends the run early at that step with a
  checkpoint, as a preempted job would, without changing any schedule; running again
  continues from there (0 on a fresh start saves the initial state as checkpoint 0).
  `description` names the run in the log (default "Pretraining <method>").
  SIGTERM or a preemption notice ends the run after a step with a checkpoint; Ctrl-C
  (SIGINT) does the same, then raises KeyboardInterrupt so that the caller stops too.
  `evaluations` (e.g. the k-NN monitor, mim_jax/evaluation/monitor.py) are called as
  `evaluation(state, step) -> {name: float}` every `evaluation.every_steps` steps and at
  the last step, and their scalars are written to TensorBoard.

  Nothing is written to `workdir` before the config is checked, against
  workdir/config.json too when resuming (`check_resume`). Steps that an earlier attempt
  already logged (it stopped after its last checkpoint) are not logged again when the
  resume is exact, so TensorBoard holds every step once.
  """
  process_count = jax.process_count()
  validate_config(config, jax.device_count(), process_count)
  data.check_split(config, config.data.train_split)  # the data files, before any write
  mesh = sharding.create_mesh(config)
  total_steps, warmup_steps, steps_per_epoch = schedule_lengths(config)
  peak_lr = optim.scaled_lr(config.optimizer.base_lr, config.optimizer.lr_scaling,
                            config.batch_size)
  lr_fn = optim.lr_schedule_from_config(config, peak_lr, total_steps, warmup_steps,
                                       steps_per_epoch)
  tx = optim.create_optimizer(config, lr_fn)
  logging.info("%s: %d steps (%d per epoch), warmup %d, peak lr %.3g, mesh %s",
               description or f"Pretraining {config.method.name}", total_steps,
               steps_per_epoch, warmup_steps, peak_lr, dict(mesh.shape))

  state, state_shardings = create_train_state(method, tx, config, mesh,
                                              sample_batch(config, method))
  changes = check_resume(workdir, config, state)  # raises before anything is written

  claim = lock.acquire(workdir)  # one run per workdir (mim_jax/lock.py): before any write
  manager = checkpoint.create_manager(workdir, config, clean_up_temporary=True)
  restored = checkpoint.restore_latest(
      manager, checkpoint.abstract_with_shardings(state, state_shardings),
      set_aside_damaged=True)
  data_state = None
  if restored is not None:
    state, data_state = restored
    logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
  else:
    params, target_params = method.warm_start(state.params, state.target_params)
    state = state.replace(params=place_like(params, state.params),
                          target_params=place_like(target_params, state.target_params))
  start_step = int(state.step)
  if restored is None:
    changes = None  # a fresh start: nothing to compare with
  record_config(workdir, config, changes, start_step)
  position = InputPosition.resume(data_state, start_step, config.batch_size)
  logged_through = already_logged(workdir, start_step, changes)

  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jit_train_step(method, tx, lr_fn, config, total_steps, mesh, state_shardings)
  num_images = config.num_summary_images

  @jax.jit
  def summary_fn(params, batch, rng):
    head = jax.tree.map(lambda x: x[:num_images], batch)
    return method.summaries(params, head, method.make_masks(rng, head))

  train_iter = data.create_train_iterator(config, global_batch_size=config.batch_size,
                                          start_element=position.next_element,
                                          num_views=method.num_views)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = Progress(total_steps, config.batch_size)
  saver = checkpoint.Saver(manager)
  last_step = total_steps if stop_after_step is None else min(stop_after_step, total_steps)
  try:
    if last_step == start_step and start_step not in manager.all_steps():
      # stop_after_step=0 on a fresh start: the initial state as checkpoint 0
      saver.save(start_step, state, position.gathered())
    previous_streak = None
    with preemption.PreemptionWatch() as watch:
      for step in range(start_step + 1, last_step + 1):
        local = next(train_iter)
        position.advance(local["element"])
        batch = sharding.global_batch({k: local[k] for k in method.batch_keys}, batch_sharding)
        state, metrics = train_step(state, batch)
        new = step > logged_through
        if step == start_step + 1:  # keep compilation out of the throughput figures
          jax.block_until_ready(metrics)
          progress.start(step)
        # The streak of the step before, read while this one runs: no step waits for its
        # own, and a streak is stopped at most one step late, at any log_every_steps.
        if previous_streak is not None:
          check_nonfinite_streak(int(previous_streak), step - 1, manager, config)
        previous_streak = metrics["nonfinite_streak"]
        if step % config.log_every_steps == 0 or step == last_step:
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          scalars.update(epoch=step / steps_per_epoch,
                         skipped_images=sum(position.gathered()["skipped_images"]))
          scalars.update(progress.measure(step))
          if new:
            writer.write_scalars(step, scalars)
          check_nonfinite_streak(int(scalars["nonfinite_streak"]), step, manager, config)
        if (new and config.image_summary_every_steps
            and step % config.image_summary_every_steps == 0):
          with progress.paused(state):
            images = summary_fn(state.params, batch, jax.random.PRNGKey(step))
            writer.write_images(step, jax.device_get(images))
        for evaluation in evaluations:
          if new and (step % evaluation.every_steps == 0 or step == total_steps):
            with progress.paused(state):
              writer.write_scalars(step, evaluation(state, step))
        saver.check(step)  # a failed background save stops the run here
        preempted = watch.should_stop(step)
        if (step % config.checkpoint_every_steps == 0 or step == last_step or preempted):
          streak = int(metrics["nonfinite_streak"])
          check_nonfinite_streak(streak, step, manager, config, final=step == total_steps)
          if streak:
            logging.warning("No checkpoint at step %d: steps %d..%d were non-finite (none "
                            "is written while they are).", step, step - streak + 1, step)
          else:
            with progress.paused(state):
              saver.save(step, state, position.gathered())
        if preempted:
          saved = (f"checkpoint saved in {manager.directory}" if not streak else
                   "no checkpoint (non-finite steps); the newest one is resumed")
          logging.warning("Stopped at step %d; %s. Run the same command again to resume.",
                          step, saved)
          break
    saver.finish()
    if watch.received == signal.SIGINT:  # Ctrl-C: saved as above, then stop the caller too
      raise KeyboardInterrupt(f"Ctrl-C: stopped at step {int(state.step)} with a checkpoint")
  finally:
    saver.close()
    writer.flush()
    claim.release()
  return state


# Config fields that change what is logged or kept, not the computed steps: a resume
# that changes only these is exact (see already_logged).
BOOKKEEPING_FIELDS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                      "image_summary_every_steps", "num_summary_images",
                      "max_nonfinite_steps", "knn_monitor.")


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 state: TrainState) -> Optional[Dict[str, list]]:
  """Before anything is written: when `workdir` has checkpoints, the changes from its
  config.json ({field: [old, new]}; None without a config.json). A change that alters
  the saved train state (model, method, optimizer kind: arrays added, removed or
  reshaped) is refused with the changed fields; config.json stays as it is.

  Other changes (lr, steps, batch size, logging, ...) are accepted: a run that diverged
  must resume from an earlier checkpoint with a lower lr, and a longer schedule or
  another batch size is a deliberate decision; `record_config` logs them and appends
  them to config.json's history. Such a resume is no longer the uninterrupted run.
  """
  if not checkpoint.checkpoint_dir(workdir).is_dir():
    return None  # (process 0 may create it while another process is here: no barrier below)
  manager = checkpoint.open_for_reading(workdir)
  try:
    if not manager.all_steps():
      return None
    try:
      changes = checkpoint.config_changes(checkpoint.read_config(workdir), config)
    except FileNotFoundError:
      changes = None
    differences = checkpoint.state_layout_differences(manager, state)
  finally:
    manager.close()
  if differences:
    changed = (checkpoint.describe_changes(changes) if changes else
               "none found" if changes is not None else "unknown: no config.json")
    shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
    raise ValueError(
        f"This config cannot resume the run in {workdir}: its train state differs from the "
        f"checkpoints' ({len(differences)} arrays: {shown}). Changed config fields: "
        f"{changed}. Resume with the run's config ({workdir}/config.json, left unchanged) "
        "or start a new workdir.")
  return changes


def record_config(workdir: str, config: ml_collections.ConfigDict,
                  changes: Optional[Dict[str, list]], step: int) -> None:
  """workdir/config.json := `config`; a resume (`changes` not None) with changes logs
  them and adds {"step", "changes"} to the history kept in config.json."""
  history = []
  if changes is not None:
    try:
      history = checkpoint.read_config_history(workdir)
    except FileNotFoundError:
      pass
    if changes:
      logging.warning("Resuming at step %d with a changed config (recorded in %s/config.json"
                      "): %s", step, workdir, checkpoint.describe_changes(changes))
      history = history + [{"step": step, "changes": changes}]
  checkpoint.write_config(workdir, config, history)


def already_logged(workdir: str, start_step: int,
                   changes: Optional[Dict[str, list]]) -> int:
  """The last step not to log again. An attempt that stopped after its last checkpoint
  (a failed save, a kill, a damaged checkpoint) logged steps beyond `start_step`; a
  resume with the same config (`changes` only in BOOKKEEPING_FIELDS) recomputes exactly
  those values, so they stay as logged: the newest logged step. Otherwise `start_step`
  (with another config the recomputed steps differ and are logged again)."""
  if changes is None:
    return start_step
  if any(not key.startswith(BOOKKEEPING_FIELDS) for key in changes):
    return start_step
  logged = events.last_step(workdir)
  if logged > start_step:
    logging.info("Steps %d..%d were logged before the resume and recompute exactly; they "
                 "are not logged again.", start_step + 1, logged)
  return max(logged, start_step)


class Progress:
  """Steps/s, step time, images/s and ETA over the time spent in train steps: the clock
  starts after the first step of a start (compilation) and stops around evaluations,
  image summaries and checkpoint saves (`paused`)."""

  def __init__(self, total_steps: int, batch_size: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.step = None

  def start(self, step: int) -> None:
    self.step, self.time, self.excluded = step, time.perf_counter(), 0.0

  @contextlib.contextmanager
  def paused(self, state: PyTree):
    jax.block_until_ready(state)  # the steps before belong to the timed part
    begin = time.perf_counter()
    try:
      yield
    finally:
      self.excluded += time.perf_counter() - begin

  def measure(self, step: int) -> Dict[str, float]:
    """The figures since the last call (logged with the ETA); {} if no step was timed.
    Call after the step's results are on the host."""
    if self.step is None or step <= self.step:
      return {}
    seconds = (time.perf_counter() - self.time - self.excluded) / (step - self.step)
    self.start(step)
    logging.info("Step %d/%d (%.1f%%): %.3g steps/s, %.3g s/step, ETA %s", step,
                 self.total_steps, 100.0 * step / self.total_steps, 1.0 / seconds, seconds,
                 format_duration((self.total_steps - step) * seconds))
    return {"step_time": seconds, "steps_per_sec": 1.0 / seconds,
            "images_per_sec": self.batch_size / seconds}


def format_duration(seconds: float) -> str:
  """h:mm:ss."""
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def place_like(tree: PyTree, placed: PyTree) -> PyTree:
  """`tree`'s values in `placed`'s shardings (every process holds the full values)."""
  return jax.tree.map(
      lambda value, like: value if value is like else jax.make_array_from_callback(
          like.shape, like.sharding, lambda index, v=np.asarray(value, like.dtype): v[index]),
      tree, placed)


class InputPosition:
  """This process's position in its train element stream (see mim_jax/data/pipeline.py)
  and the unreadable images it skipped; saved with every checkpoint."""

  def __init__(self, next_element: int, skipped: int = 0, global_batch_size: int = 0):
    self.next_element = next_element
    self.skipped = skipped
    self.global_batch_size = global_batch_size

  @classmethod
  def resume(cls, data_state: Optional[dict], step: int, global_batch_size: int):
    """From a checkpoint's data item; without a usable one, from the step count."""
    index, count = jax.process_index(), jax.process_count()
    if data_state and len(data_state["next_element"]) == count and (
        data_state["global_batch_size"] == global_batch_size):
      return cls(data_state["next_element"][index], data_state["skipped_images"][index],
                 global_batch_size)
    if data_state:
      logging.warning("The checkpoint's input position was written by %d processes with "
                      "batch %d; continuing from step %d's nominal position instead.",
                      len(data_state["next_element"]), data_state["global_batch_size"], step)
    return cls(step * (global_batch_size // count), 0, global_batch_size)

  def advance(self, elements: np.ndarray) -> None:
    """Account for a batch whose examples had stream positions `elements`."""
    consumed = int(elements[-1]) + 1
    self.skipped += consumed - self.next_element - len(elements)
    self.next_element = consumed

  def gathered(self) -> dict:
    """Every process's position (a collective: all processes call it at the same step)."""
    local = np.array([self.next_element, self.skipped], np.int64)
    rows = (multihost_utils.process_allgather(local) if jax.process_count() > 1
            else local[None])
    return {"next_element": [int(v) for v in rows[:, 0]],
            "skipped_images": [int(v) for v in rows[:, 1]],
            "global_batch_size": self.global_batch_size}


class NonFiniteError(FloatingPointError):
  """Too many steps in a row had a non-finite loss or gradient."""


def check_nonfinite_streak(streak: int, step: int, manager, config,
                           final: bool = False) -> None:
  """Stop the run once config.max_nonfinite_steps steps in a row had a non-finite loss
  or gradient, or when the last step (`final`) is one of them (its checkpoint is not
  written), naming the newest checkpoint from before the streak."""
  max_streak = config.max_nonfinite_steps
  if streak < max_streak and not (final and streak):
    return
  first_bad = step - streak + 1
  good = [s for s in manager.all_steps() if s < first_bad]
  what = (f"{streak} consecutive steps ({first_bad}..{step}) had a non-finite loss or "
          f"gradient and were skipped (config.max_nonfinite_steps={max_streak})")
  if streak < max_streak:
    what = (f"The last {streak} steps ({first_bad}..{step}) had a non-finite loss or "
            "gradient, so the final checkpoint was not written")
  fix = (f"lower config.optimizer.base_lr (now {config.optimizer.base_lr:g}), raise "
         "config.warmup_steps / warmup_epochs, set config.optimizer.grad_clip or compute in "
         "float32 (config.model.dtype)")
  if good:
    where = (f"The newest checkpoint from before step {first_bad} is step {max(good)} in "
             f"{manager.directory}: {fix}, then run the same command again to resume from it.")
  else:
    where = (f"No checkpoint was written before step {first_bad} (none is written while "
             f"steps are non-finite): {fix}, then run the same command again; it starts "
             "from step 0.")
  raise NonFiniteError(f"{what}. {where}")

