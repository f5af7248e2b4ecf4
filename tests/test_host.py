"""mim_jax/host.py: with 'keep', a program whose temporaries take one large block runs
without page-faulting that block in again at every call; with 'system' (glibc's
defaults) every call faults it in."""
import platform
import subprocess
import sys

import pytest

from mim_jax import host

# Minor page faults per call of a jitted x.T @ x on x [1024, 4096] f32: its 64 MB result
# is a temporary (only its sum is returned). Median of the last 5 of 8 calls.
PROGRAM = """
import resource, sys
from mim_jax import host
print(host.keep_freed_memory(sys.argv[1]))
import jax, jax.numpy as jnp, numpy as np
f = jax.jit(lambda x: jnp.sum((x.T @ x) * 2.0))
x = jnp.asarray(np.ones((1024, 4096), np.float32))
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(np.median(faults[3:])))
"""
BLOCK_PAGES = 64 * 2**20 // 4096


def faults_per_call(mode):
  out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                       check=True, timeout=300).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_keep_stops_the_step_block_being_faulted_in_at_every_call():
  applied, system_faults = faults_per_call("system")
  assert not applied and system_faults >= 0.9 * BLOCK_PAGES
  applied, kept_faults = faults_per_call("keep")
  assert applied and kept_faults < 0.05 * BLOCK_PAGES


def test_auto_keeps_only_on_a_cpu_host(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not host.on_cpu_only() and not host.keep_freed_memory("auto")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host.on_cpu_only()
  with pytest.raises(ValueError, match="must be one of"):
    host.keep_freed_memory("always")
