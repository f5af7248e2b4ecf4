"""mim_jax/preemption.py: SIGTERM and SIGINT become a stop at the next step (the whole
process, through main.py, in tests/system/test_reliability.py and test_multihost.py)."""
import os
import signal

import pytest

from mim_jax import preemption


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_watch_turns_a_signal_into_a_stop_and_restores_the_old_handler(sig):
  before = signal.getsignal(sig)
  with preemption.PreemptionWatch() as watch:
    assert not watch.should_stop(1)
    os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
    assert watch.should_stop(2)
  assert signal.getsignal(sig) is before
