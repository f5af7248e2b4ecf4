"""The training loop (`train_and_evaluate`): one for pretraining and for the protocols that
train on a pretrained encoder (mim_jax/evaluation/downstream.py).

A run resumes from the latest checkpoint in its workdir; a fresh start takes its params
from `method.warm_start`. Nothing is written before the config is checked, against
workdir/config.json too when resuming (record.py). Each step's metrics are logged every
`config.log_every_steps`, image summaries every `config.image_summary_every_steps`, the
`evaluations` (e.g. the k-NN monitor, `config.evals`) every `evaluation.every_steps` and
at the last step; steps an earlier attempt already logged are not logged again on an exact
resume, so TensorBoard holds every step once. SIGTERM or a preemption notice ends the run
after a step with a checkpoint; Ctrl-C (SIGINT) does the same, then raises
KeyboardInterrupt so that the caller stops too. Too many non-finite steps in a row stop
the run with `NonFiniteError` naming the checkpoint to resume from (a step's streak is
read while the next step runs, so no step waits for its own). `evaluations` are called as
`evaluation(state, step) -> {name: float}`.
"""
import signal
from typing import Callable, Iterator, Optional, Sequence

import jax
from absl import logging
from clu import metric_writers

from mim_jax import checkpoint, data, lock, optim, preemption, sharding
from mim_jax.methods.base import Method
from mim_jax.training import record
from mim_jax.training.config import Schedule, validate
from mim_jax.training.progress import Progress, StepTrace
from mim_jax.training.state import TrainState, create_train_state, place_like
from mim_jax.training.train_step import jit_train_step


def train_and_evaluate(config, workdir: str, method: Method, schedule: Schedule,
                       stop_after_step: Optional[int] = None, *,
                       evaluations: Sequence[Callable] = (),
                       description: Optional[str] = None,
                       devices: Optional[Sequence[jax.Device]] = None) -> TrainState:
  """Train `method` (built for `schedule.total_steps`) in `workdir`; see the module
  docstring. `stop_after_step` ends the run there with a checkpoint, as a preemption would
  (0 on a fresh start: checkpoint 0); `description` names the run in the log; `devices`
  (one process only; default: all) are those the step runs on."""
  mesh, tx, state, shardings, changes = setup(config, workdir, method, schedule, description,
                                              devices)
  with lock.hold(workdir):  # one run per workdir (mim_jax/lock.py): before any write
    manager = checkpoint.create_manager(workdir, config, clean_up_temporary=True)
    state, position, logged_through = resume(workdir, config, method, manager, state,
                                             shardings, changes)
    start_step, total_steps = int(state.step), schedule.total_steps
    last_step = total_steps if stop_after_step is None else min(stop_after_step, total_steps)
    step_fn = jit_train_step(method, tx, schedule.lr, config, mesh, shardings)
    batches = global_batches(config, method, mesh, position)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    summaries = image_summaries(method, config)
    progress = Progress(total_steps, config.batch_size)
    trace = StepTrace(config.profile_steps, workdir)
    saver = checkpoint.Saver(manager)
    try:
      if last_step == start_step and start_step not in manager.all_steps():
        saver.save(start_step, state, position.gathered())  # checkpoint 0 (stop_after_step=0)
      streak = 0
      with preemption.PreemptionWatch() as watch:
        for step in range(start_step + 1, last_step + 1):
          batch = next(batches)
          trace.before(step)
          state, metrics = step_fn(state, batch)
          trace.after(step, state)
          new = step > logged_through
          if step == start_step + 1:  # keep compilation out of the throughput figures
            jax.block_until_ready(metrics)
            progress.start(step)
          check_nonfinite_streak(int(streak), step - 1, manager, config)  # one step late
          streak = metrics["nonfinite_streak"]
          if due(step, config.log_every_steps) or step == last_step:
            log_metrics(writer, new, metrics, step, schedule, position, progress, manager,
                        config)
          if new and due(step, config.image_summary_every_steps):
            with progress.paused(state):
              writer.write_images(step, summaries(state, batch, step))
          for evaluation in evaluations:
            if new and (due(step, evaluation.every_steps) or step == total_steps):
              with progress.paused(state):
                writer.write_scalars(step, evaluation(state, step))
          saver.check(step)  # a failed background save stops the run here
          preempted = watch.should_stop(step)
          if due(step, config.checkpoint_every_steps) or step == last_step or preempted:
            with progress.paused(state):
              save(saver, state, step, int(streak), position, config,
                   final=step == total_steps, preempted=preempted)
          if preempted:
            break
      saver.finish()
      if watch.received == signal.SIGINT:  # Ctrl-C: saved as above, then stop the caller
        raise KeyboardInterrupt(f"Ctrl-C: stopped at step {int(state.step)} with a checkpoint")
    finally:
      trace.stop()  # after an error too (the last step's state was waited for above)
      saver.close()
      writer.flush()
  return state


def setup(config, workdir: str, method: Method, schedule: Schedule,
          description: Optional[str], devices: Optional[Sequence[jax.Device]] = None):
  """(mesh over `devices` (default: all), optimizer, fresh state, its shardings, config
  changes from the workdir's run): everything checked that can be before anything is
  written or the step compiled."""
  if devices is not None and (jax.process_count() > 1 or not devices):
    raise ValueError(f"A run on chosen devices needs one process and at least one device; "
                     f"got {len(devices)} devices in {jax.process_count()} processes: leave "
                     "`devices` out to run on all of them.")
  devices = jax.devices() if devices is None else list(devices)
  validate(config, len(devices), jax.process_count())
  data.check_split(config, config.data.train_split)  # the data files, before any write
  mesh = sharding.create_mesh(config, devices)
  tx = optim.create_optimizer(config, schedule.lr)
  logging.info("%s: %d steps (%d per epoch), warmup %d, peak lr %.3g, mesh %s",
               description or f"Pretraining {config.method.name}", schedule.total_steps,
               schedule.steps_per_epoch, schedule.warmup_steps, schedule.peak_lr,
               dict(mesh.shape))
  state, shardings = create_train_state(method, tx, config, mesh)
  changes = record.check_resume(workdir, config, state)  # raises before anything is written
  return mesh, tx, state, shardings, changes


def due(step: int, every: int) -> bool:
  """Whether something done every `every` steps (0: never) is due at `step`."""
  return bool(every) and step % every == 0


def resume(workdir, config, method, manager, state, shardings, changes):
  """(state, input position, last step already logged) of the run in `workdir`: its
  newest readable checkpoint (damaged ones set aside), else the fresh `state` with
  `method.warm_start`'s params; config.json written with the resume's changes."""
  restored = checkpoint.restore_latest(
      manager, checkpoint.abstract_with_shardings(state, shardings), set_aside_damaged=True)
  data_state = None
  if restored is not None:
    state, data_state = restored
    logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
  else:
    changes = None  # a fresh start: nothing to compare with
    params, target_params = method.warm_start(state.params, state.target_params)
    state = state.replace(params=place_like(params, state.params),
                          target_params=place_like(target_params, state.target_params))
  start_step = int(state.step)
  record.record_config(workdir, config, changes, start_step)
  position = record.InputPosition.resume(data_state, start_step, config.batch_size)
  return state, position, record.already_logged(workdir, start_step, changes)


def global_batches(config, method: Method, mesh, position: record.InputPosition) -> Iterator:
  """The train batches from `position` on, as global arrays on `mesh`; each one read
  advances `position`."""
  batch_sharding = sharding.batch_sharding(mesh)
  for local in data.create_train_iterator(config, global_batch_size=config.batch_size,
                                          start_element=position.next_element,
                                          num_views=method.num_views):
    position.advance(local["element"])
    yield sharding.global_batch({k: local[k] for k in method.batch_keys}, batch_sharding)


def image_summaries(method: Method, config) -> Callable:
  """`summaries(state, batch, step) -> {name: images}` of the first
  `config.num_summary_images` images of `batch`, masked with a key from `step`."""
  num_images = config.num_summary_images

  @jax.jit
  def summary_fn(params, batch, rng):
    head = jax.tree.map(lambda x: x[:num_images], batch)
    return method.summaries(params, head, method.make_masks(rng, head))

  return lambda state, batch, step: jax.device_get(
      summary_fn(state.params, batch, jax.random.PRNGKey(step)))


def log_metrics(writer, new: bool, metrics, step: int, schedule: Schedule,
                position: record.InputPosition, progress: Progress, manager, config) -> None:
  """Log the step's metrics with the epoch, the images skipped as unreadable and the
  throughput since the last call (written to TensorBoard when the step is `new`), and
  stop the run if its non-finite streak is too long."""
  scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
  scalars.update(epoch=step / schedule.steps_per_epoch,
                 skipped_images=sum(position.gathered()["skipped_images"]))
  scalars.update(progress.measure(step))
  if new:
    writer.write_scalars(step, scalars)
  check_nonfinite_streak(int(scalars["nonfinite_streak"]), step, manager, config)


def save(saver: checkpoint.Saver, state: TrainState, step: int, streak: int,
         position: record.InputPosition, config, final: bool, preempted: bool) -> None:
  """Checkpoint `step`, unless it ends a streak of non-finite steps (then the run stops
  if the streak is too long or the step is the last one)."""
  check_nonfinite_streak(streak, step, saver.manager, config, final=final)
  if streak:
    logging.warning("No checkpoint at step %d: steps %d..%d were non-finite (none is "
                    "written while they are).", step, step - streak + 1, step)
  else:
    saver.save(step, state, position.gathered())
  if preempted:
    saved = (f"checkpoint saved in {saver.manager.directory}" if not streak else
             "no checkpoint (non-finite steps); the newest one is resumed")
    logging.warning("Stopped at step %d; %s. Run the same command again to resume.", step,
                    saved)


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
