"""mim_jax/distributed.py: how the process layout is read (flags, SLURM, Cloud TPU) and the
errors that name the flag. Two processes really training: tests/system/test_multihost.py."""
import pytest

from mim_jax import distributed


SLURM_2_TASKS = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-02]",
                 "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


def init_kwargs(mode="auto", environ=None, cloud_tpu=False, **layout):
  return distributed.initialize_kwargs(mode, environ={} if environ is None else environ,
                                       cloud_tpu=cloud_tpu, **layout)


def test_a_laptop_run_is_one_process():
  assert init_kwargs() is None
  assert init_kwargs("off", environ=SLURM_2_TASKS, cloud_tpu=True) is None
  assert init_kwargs(environ=dict(SLURM_2_TASKS, SLURM_NTASKS="1")) is None


def test_explicit_flags_are_passed_to_jax():
  assert init_kwargs(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3,
                     local_device_ids=["0", "1"]) == {
                  "coordinator_address": "10.0.0.2:1234", "num_processes": 4,
                  "process_id": 3, "local_device_ids": [0, 1]}


def test_cluster_environments_leave_the_layout_to_jax():
  assert init_kwargs(environ=SLURM_2_TASKS) == {}
  assert init_kwargs(cloud_tpu=True) == {}
  assert init_kwargs("on") == {}
  assert init_kwargs(environ=SLURM_2_TASKS, process_id=1) == {"process_id": 1}
  assert init_kwargs(environ={"JAX_COORDINATOR_ADDRESS": "h:1"}, num_processes=2,
                     process_id=0) == {"num_processes": 2, "process_id": 0}


@pytest.mark.parametrize("kwargs, message", [
    ({"coordinator_address": "h:1", "num_processes": 2}, "also set --process_id"),
    ({"num_processes": 2, "process_id": 0}, "also set --coordinator_address"),
    ({"environ": {"JAX_COORDINATOR_ADDRESS": "h:1"}}, "--num_processes, --process_id"),
    ({"coordinator_address": "h", "num_processes": 2, "process_id": 0}, "must be host:port"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
     r"--process_id=2 must be in \[0, --num_processes=2\)"),
    ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0},
     "--num_processes=0 must be at least 1"),
    ({"mode": "off", "num_processes": 2}, "--distributed=off contradicts --num_processes"),
    ({"mode": "sometimes"}, "--distributed='sometimes'"),
])
def test_layout_errors_name_the_flag(kwargs, message):
  with pytest.raises(ValueError, match=message):
    init_kwargs(**kwargs)
