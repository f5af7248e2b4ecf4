"""mim_jax/host.py: with 'system' (glibc's defaults) every call of a program whose
temporaries take one large block page-faults that block in again; with 'keep' the block
is reused from the heap, and only the calls that still grow the heap (glibc splits freed
blocks for small requests, so now and then the next block no longer fits) fault."""
import platform
import subprocess
import sys

import pytest

from mim_jax import host

# Minor page faults per call of a jitted x.T @ x on x [256, 4096] f32: its 64 MB result
# is a temporary (only its sum is returned). 36 calls; the first 6 grow the heap.
PROGRAM = """
import resource, sys
from mim_jax import host
print(host.keep_freed_memory(sys.argv[1]))
import jax, jax.numpy as jnp, numpy as np
f = jax.jit(lambda x: jnp.sum((x.T @ x) * 2.0))
x = jnp.asarray(np.ones((256, 4096), np.float32))
faults = []
for _ in range(36):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults[6:])
"""
BLOCK_PAGES = 64 * 2**20 // 4096


def faults_per_call(mode):
  """(whether the settings were applied, faults of each of the last 30 calls)."""
  out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                       check=True, timeout=300).stdout.split()
  return out[0] == "True", [int(n) for n in out[1:]]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_keep_stops_the_step_block_being_faulted_in_at_every_call():
  refaulted = lambda faults: sum(n >= 0.9 * BLOCK_PAGES for n in faults)
  applied, system_faults = faults_per_call("system")
  assert not applied and refaulted(system_faults) == 30
  applied, kept_faults = faults_per_call("keep")
  # Seen over 35 runs: 0 to 5 of the 30 calls (0.9 on average) still grew the heap; the
  # others fault fewer than 5 pages.
  assert applied and refaulted(kept_faults) <= 9
  assert sorted(kept_faults)[15] < 0.01 * BLOCK_PAGES


def test_auto_keeps_only_on_a_cpu_host(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not host.on_cpu_only() and not host.keep_freed_memory("auto")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host.on_cpu_only()
  with pytest.raises(ValueError, match="must be one of"):
    host.keep_freed_memory("always")
