"""Step time, throughput and ETA of a training run, over the time spent in train steps;
a profiler trace of chosen steps (`StepTrace`)."""
import contextlib
import time
from typing import Any, Dict, Optional, Sequence

import jax
from absl import logging

PyTree = Any


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


class StepTrace:
  """A jax.profiler trace of the train steps `config.profile_steps` = (first, last), both
  included (() : none), by process 0, into workdir/plugins/profile/<date>/: TensorBoard's
  profile plugin reads it from the workdir, Perfetto (ui.perfetto.dev) its
  perfetto_trace.json.gz. A resumed run traces the steps of the range it runs. The same
  on CPU, GPU and TPU (jax.profiler; MaxText's `profiler` and big_vision's `xprof`). The
  Python tracer is off: a trace of two tiny test steps with it was 4x the size and took
  13 s more to write."""

  def __init__(self, steps: Sequence[int], workdir: str):
    self.first, self.last = tuple(steps) if len(steps) else (1, 0)
    self.workdir = workdir
    self.active = False

  def before(self, step: int) -> None:
    """Called before the train step `step` is dispatched."""
    if (not self.active and self.first <= step <= self.last and jax.process_index() == 0):
      options = jax.profiler.ProfileOptions()
      options.python_tracer_level = 0  # host and device events only: Python's are most
      jax.profiler.start_trace(self.workdir, create_perfetto_trace=True,
                               profiler_options=options)
      self.active = True
      logging.info("Tracing steps %d-%d into %s/plugins/profile/.", step, self.last,
                   self.workdir)

  def after(self, step: int, state: PyTree) -> None:
    """Called after the train step `step` is dispatched: ends the trace after `last`."""
    if step >= self.last:
      self.stop(state)

  def stop(self, state: Optional[PyTree] = None) -> None:
    """End the trace (if one runs) once `state` is computed."""
    if self.active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
