"""Noticing that a run must stop: SIGTERM/SIGINT, or a Cloud TPU preemption notice.

Without `jax.distributed`: SIGTERM and SIGINT are caught and remembered, so the trainer
can save a checkpoint at the end of the current step and exit cleanly.

With `jax.distributed` initialised (several processes, or one process launched with
--distributed=on, as on a single-host TPU VM): JAX's preemption sync point
(`jax.experimental.multihost_utils.reached_preemption_sync_point`) decides. The
coordination service raises it on SIGTERM to any process and on the Cloud TPU
maintenance notice, and picks one step at which every process stops. SIGTERM is left to
JAX's own handler there. SIGINT is still caught when there is one process; with several,
Ctrl-C on one of them cannot stop the others at the same step, so it is not caught.
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
    self._sync_point = jax.distributed.is_initialized()
    if not self._sync_point:
      self._caught = STOP_SIGNALS
    else:
      self._caught = (signal.SIGINT,) if jax.process_count() == 1 else ()

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received %s: stopping after this step with a checkpoint.",
                    signal.Signals(signum).name)
    self.received = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self._caught:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    """True at the step where the run must save and stop. With jax.distributed every
    process must call this at every step (the sync point is agreed on step ids)."""
    if self.received is not None:
      return True
    return self._sync_point and multihost_utils.reached_preemption_sync_point(step)
