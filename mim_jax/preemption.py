"""Noticing that a run must stop: SIGTERM/SIGINT, or a Cloud TPU preemption notice.

One process: SIGTERM and SIGINT are caught and remembered, so the trainer can save a
checkpoint at the end of the current step and exit cleanly. Several processes: JAX's
preemption sync point (`jax.experimental.multihost_utils.reached_preemption_sync_point`),
which the coordination service raises on SIGTERM and on the Cloud TPU maintenance
notice, makes every process stop at the same step.
"""
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatch:
  """Use as a context manager around the train loop; ask `should_stop(step)` each step."""

  def __init__(self):
    self.received = None
    self._previous = {}
    self._multi_process = jax.process_count() > 1

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received %s: stopping after this step with a checkpoint.",
                    signal.Signals(signum).name)
    self.received = signum

  def __enter__(self):
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      for sig in STOP_SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None
