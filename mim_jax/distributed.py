"""Multi-process start-up: `jax.distributed.initialize()` from flags or the environment.

`initialize_from_flags()` must run before anything touches the devices (main.py calls it
first). With `--distributed=auto` (the default) the process layout comes from, in order:
  1. explicit flags `--coordinator_address=host:port`, `--num_processes`, `--process_id`
     (optionally `--local_device_ids`), or JAX_COORDINATOR_ADDRESS in the environment;
     JAX fills any left unset from the cluster environment;
  2. a SLURM job step with more than one task: JAX takes the coordinator from the first
     node of SLURM_STEP_NODELIST, the process count and index from SLURM_NTASKS and
     SLURM_PROCID, and gives each task the GPU numbered SLURM_LOCALID (one task per GPU);
  3. a Cloud TPU VM (libtpu installed and a TPU chip on the PCI bus): JAX reads the
     worker layout from the TPU metadata server.
Anything else is a single-process run over the local devices. `--distributed=on` always
initialises, leaving every unset value to JAX's detection (which also knows Open MPI and
Kubernetes); `--distributed=off` never does. Between processes on CPU, collectives use
gloo (`jax_cpu_collectives_implementation`, whose default is "gloo" in jax 0.10.2).
"""
import glob
import importlib.util
import os
from typing import Mapping, Optional, Sequence

import jax
from absl import flags, logging

MODES = ("auto", "on", "off")
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (as jax/_src/hardware_utils.py detects them)
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")

flags.DEFINE_enum("distributed", "auto", MODES,
                  "Multi-process start-up: auto (explicit flags, SLURM or Cloud TPU), on "
                  "(always jax.distributed.initialize()), off (one process).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, where the JAX coordination service listens.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
flags.DEFINE_integer("process_id", None, "Index of this process, in [0, num_processes).")
flags.DEFINE_list("local_device_ids", None,
                  "Local accelerator ids this process uses (e.g. 0,1,2,3); default all.")


def slurm_tasks(environ: Mapping[str, str]) -> int:
  """Tasks of the current SLURM job step (0 outside one JAX can read)."""
  if not all(name in environ for name in _SLURM_VARS):
    return 0
  return int(environ["SLURM_NTASKS"])


def on_cloud_tpu_vm() -> bool:
  """libtpu is installed and a Google TPU chip sits on the PCI bus."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    with open(vendor_file) as f:
      if f.read().strip() == _GOOGLE_PCI_VENDOR:
        return True
  return False


def initialize_kwargs(mode: str = "auto", coordinator_address: Optional[str] = None,
                      num_processes: Optional[int] = None, process_id: Optional[int] = None,
                      local_device_ids: Optional[Sequence[int]] = None,
                      environ: Optional[Mapping[str, str]] = None,
                      cloud_tpu: Optional[bool] = None) -> Optional[dict]:
  """Keyword arguments for `jax.distributed.initialize`, or None for one process.

  Raises ValueError (naming the flag) for values that cannot start a job.
  """
  environ = os.environ if environ is None else environ
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}: choose one of {MODES}.")
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id,
              "local_device_ids": None if local_device_ids is None else
              [int(i) for i in local_device_ids]}
  given = {k: v for k, v in explicit.items() if v is not None}
  if mode == "off":
    if given:
      raise ValueError(f"--distributed=off contradicts --{', --'.join(given)}: drop them "
                       "or use --distributed=auto.")
    return None
  if coordinator_address is not None and not coordinator_address.rpartition(":")[2].isdigit():
    raise ValueError(f"--coordinator_address={coordinator_address!r} must be host:port "
                     "(e.g. 10.0.0.2:12345).")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be at least 1.")
  if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                     f"{num_processes}).")
  cluster = slurm_tasks(environ) > 1 or (
      on_cloud_tpu_vm() if cloud_tpu is None else cloud_tpu)
  if mode == "on" or cluster:
    return given
  if given or "JAX_COORDINATOR_ADDRESS" in environ:
    coordinator = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
    missing = [f"--{name}" for name, value in (("coordinator_address", coordinator),
                                               ("num_processes", num_processes),
                                               ("process_id", process_id)) if value is None]
    if missing:
      raise ValueError(f"No SLURM or Cloud TPU environment to take the rest from: also set "
                       f"{', '.join(missing)}.")
    return given
  return None


def initialize(mode: str = "auto", **layout) -> bool:
  """`jax.distributed.initialize` with `initialize_kwargs`; True if it ran."""
  kwargs = initialize_kwargs(mode, **layout)
  if kwargs is None:
    return False
  logging.info("jax.distributed.initialize(%s)",
               ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d: %d local devices of %d.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def initialize_from_flags() -> bool:
  """`initialize` with --distributed, --coordinator_address, --num_processes,
  --process_id and --local_device_ids."""
  flag_values = flags.FLAGS
  return initialize(flag_values.distributed,
                    coordinator_address=flag_values.coordinator_address,
                    num_processes=flag_values.num_processes,
                    process_id=flag_values.process_id,
                    local_device_ids=flag_values.local_device_ids)
