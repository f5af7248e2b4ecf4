"""Host-process settings for training on the CPU, made before JAX starts its threads.

XLA's CPU runtime allocates all of a step's temporaries as one block (1.5 GB for an MAE
ViT-B/16 step at batch 8) and frees it when the step ends. glibc serves any block over
32 MB with a fresh mmap and unmaps it on free, so every step page-faults the whole block
back in, zero-filled: 380k minor faults, about 15% of that step on a 2-core host
(docs/RESULTS.md, CPU step efficiency). `keep_freed_memory` asks glibc to serve large
blocks from its heap, never to shrink it, and to keep one arena (a block freed by XLA's
worker thread stays reusable by the next step's): the block is then reused, faulted in
again only on the steps where glibc still grows its heap (it splits freed blocks for
small requests, so now and then the next block no longer fits; 1 step in 24 of an MAE
ViT-B run). The cost: the process keeps its peak heap for its lifetime, as a training
process does anyway.
"""
import ctypes
import glob
import os
import platform

from absl import flags, logging

# glibc malloc.h mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
MODES = ("auto", "keep", "system")
# Device files of the accelerators JAX drives: TPU VMs (/dev/accel*, /dev/vfio), NVIDIA.
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")

flags.DEFINE_enum("host_memory", "auto", MODES,
                  "Host malloc for XLA's per-step block (mim_jax/host.py): keep (glibc heap "
                  "kept, no page faults per step), system (glibc defaults), auto (keep on a "
                  "CPU-only host).")


def on_cpu_only() -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS says cpu, or the host has no
  accelerator device file (checked without initialising a JAX backend)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def keep_freed_memory(mode: str = "auto") -> bool:
  """Applies the glibc settings above when `mode` is 'keep', or 'auto' on a CPU-only
  host; 'system' leaves malloc alone. Returns whether they were applied (never on a
  libc other than glibc). Call before the first JAX computation."""
  if mode not in MODES:
    raise ValueError(f"host memory mode {mode!r} must be one of {MODES}.")
  if mode == "system" or (mode == "auto" and not on_cpu_only()):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(None)
  # mallopt takes an int: -1 is read as SIZE_MAX, i.e. never trim the heap.
  applied = all(libc.mallopt(param, value) == 1 for param, value in
                ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
  logging.info("Host malloc: large blocks from one heap that is never trimmed (%s).",
               "applied" if applied else "refused by glibc")
  return applied


def configure_from_flags() -> bool:
  """`keep_freed_memory` with --host_memory."""
  return keep_freed_memory(flags.FLAGS.host_memory)
