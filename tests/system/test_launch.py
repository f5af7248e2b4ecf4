"""Launchers: the printed commands of the Cloud TPU and SLURM launchers, and what the
sbatch script and the TPU launcher run (gcloud, srun, scontrol and python faked)."""
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO

MAIN_ARGS = ["--config=configs/mae.py:vit_base", "--workdir=/shared/runs/mae b16",
             "--config.batch_size=4096"]


JSON_ARGV = """python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"\n"""


def launch(script, *args, env=None, check=True):
  result = subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def commands(stdout):
  """The printed command lines (comments dropped), each split like a shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]


def fake_tool(directory, name, body):
  path = directory / name
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


# --- Cloud TPU --------------------------------------------------------------------------

TPU = ["--tpu=mae-pod", "--zone=us-central2-b", "--project=proj", "--accelerator_type=v4-32"]
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-central2-b", "--project=proj"]


def setup_python_requires():
  found = re.search(r'python_requires=">=(\d+\.\d+)"', (REPO / "setup.py").read_text())
  return found.group(1)


# The Ubuntu 22.04 TPU images have Python 3.10: the workers get the Python that setup.py
# requires from the deadsnakes PPA, in a virtual environment with the `tpu` extra.
PY = f"python{setup_python_requires()}"
INSTALL = (f"({PY} -c 'import ensurepip' 2>/dev/null || (sudo add-apt-repository -y "
           f"ppa:deadsnakes/ppa && sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive "
           f"apt-get install -y -q {PY} {PY}-venv)) && {PY} -m venv ~/mim_jax/.venv && "
           "~/mim_jax/.venv/bin/pip install -q -U pip && ~/mim_jax/.venv/bin/pip install -q -e "
           "~/mim_jax'[tpu]'")


def test_setup_py_pins_the_python_and_the_accelerator_extras_of_its_jax():
  text = (REPO / "setup.py").read_text()
  jax_pin = re.search(r'"jax==([\d.]+)"', text).group(1)
  assert setup_python_requires() == "3.11"  # jax 0.10.2 and flax 0.12.8 need 3.11
  assert f'"cuda12": ["jax[cuda12]=={jax_pin}"]' in text
  assert f'"tpu": ["jax[tpu]=={jax_pin}"]' in text


def test_tpu_dry_run_prints_every_step():
  out = launch("tpu_pod.py", *TPU, "--dry_run", "--", *MAIN_ARGS).stdout
  cmds = commands(out)
  assert cmds[0] == GCLOUD + ["describe", "mae-pod", "--format=value(state)"] + WHERE
  assert cmds[1] == GCLOUD + ["create", "mae-pod", "--accelerator-type=v4-32",
                              "--version=tpu-ubuntu2204-base"] + WHERE
  assert cmds[2][:3] == ["tar", "-czf", cmds[3][5]] and cmds[2][-4:] == [
      "setup.py", "mim_jax", "configs", "launch"]
  assert cmds[3] == GCLOUD + ["scp", cmds[2][2], "mae-pod:~/mim_jax_code.tar.gz",
                              "--worker=all"] + WHERE
  assert cmds[4][:6] == GCLOUD + ["ssh", "mae-pod"] and cmds[4][6] == "--worker=all"
  assert cmds[4][7] == (
      "--command=mkdir -p ~/mim_jax && tar -xzf ~/mim_jax_code.tar.gz -C ~/mim_jax && "
      f"{INSTALL}")
  run, stream = cmds[5], cmds[6]
  assert run[:7] == GCLOUD + ["ssh", "mae-pod", "--worker=all"] and run[8:] == WHERE
  remote = run[7].removeprefix("--command=")
  assert remote.startswith("cd ~/mim_jax && nohup ")
  main_cmd = shlex.split(remote.removeprefix("cd ~/mim_jax && nohup ").split(" > ")[0])
  assert main_cmd == [".venv/bin/python", "-m", "mim_jax.main", *MAIN_ARGS, "--distributed=on"]
  assert remote.endswith("> run.log 2>&1 < /dev/null & echo $! > run.pid")
  assert stream == GCLOUD + ["ssh", "mae-pod", "--worker=0", "--command=cd ~/mim_jax && "
                             "tail -n +1 --pid=$(cat run.pid) -f run.log"] + WHERE
  assert len(cmds) == 7


def test_tpu_dry_run_with_git_and_without_setup():
  cmds = commands(launch("tpu_pod.py", *TPU, "--dry_run", "--git_url=https://x/m.git",
                         "--git_ref=v1", "--", *MAIN_ARGS).stdout)
  assert len(cmds) == 5 and cmds[2][6] == "--worker=all"
  assert f"git clone -q --branch v1 https://x/m.git ~/mim_jax && {INSTALL}" in cmds[2][7]
  cmds = commands(launch("tpu_pod.py", *TPU, "--dry_run", "--no_setup", "--",
                         *MAIN_ARGS).stdout)
  assert [c[4] for c in cmds] == ["describe", "create", "ssh", "ssh"]


def test_tpu_launcher_creates_a_missing_vm_then_copies_and_runs(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls.jsonl"
  fake_tool(bin_dir, "gcloud", f"""{JSON_ARGV.strip()} >> {calls}
[[ "$4" == describe ]] && exit 1  # no such TPU VM yet
exit 0
""")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
  out = launch("tpu_pod.py", *TPU, "--", *MAIN_ARGS, env=env).stdout
  verbs = [json.loads(line)[3] for line in calls.read_text().splitlines()]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh"]
  assert [c[:2] for c in commands(out)][2] == ["tar", "-czf"]
  with tarfile.open(tmp_path / "mim_jax_code.tar.gz") as tar:
    names = tar.getnames()
  assert {"setup.py", "mim_jax/distributed.py", "configs/mae.py",
          "launch/slurm_gpu.sbatch"} <= set(names)
  assert not any("__pycache__" in n for n in names)


def test_tpu_launcher_stops_at_a_failing_step(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake_tool(bin_dir, "gcloud", '[[ "$4" == scp ]] && exit 3\nexit 0\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
  result = launch("tpu_pod.py", *TPU, "--", *MAIN_ARGS, env=env, check=False)
  assert result.returncode == 3 and "Failed with status 3: gcloud compute tpus tpu-vm scp" in (
      result.stderr)
  assert "nohup" not in result.stdout  # the run never started


@pytest.mark.parametrize("args, message", [
    (["--", "--config=c.py"], "--config=... and --workdir=..."),
    (["--", *MAIN_ARGS, "--process_id=1"], "drop --distributed"),
    (["--", "--config=c.py", "--workdir=/tmp/mae"],
     "--workdir=/tmp/mae is on each worker's own disk, but a v4-32 has 4 hosts"),
    (["--", "--config=c.py", "--workdir=runs/mae"], "--workdir=runs/mae is on each worker's"),
])
def test_tpu_launcher_rejects_incomplete_arguments(args, message):
  result = launch("tpu_pod.py", *TPU, "--dry_run", *args, check=False)
  assert result.returncode == 2 and message in result.stderr


def test_tpu_launcher_checks_that_the_pod_shares_the_workdir():
  shared = launch("tpu_pod.py", *TPU, "--dry_run", "--", "--config=c.py", "--workdir=gs://b/r")
  assert shared.stderr == ""
  mounted = launch("tpu_pod.py", *TPU, "--dry_run", "--", *MAIN_ARGS)
  assert ("--workdir=/shared/runs/mae b16 must be a shared file system mounted at that path on "
          "every worker (a v4-32 has 4 hosts)") in mounted.stderr
  one_host = [a for a in TPU if "accelerator" not in a] + ["--accelerator_type=v4-8"]
  alone = launch("tpu_pod.py", *one_host, "--dry_run", "--", "--config=c.py", "--workdir=/tmp/r")
  assert alone.stderr == ""  # one host: its own disk is the shared storage


# --- SLURM ------------------------------------------------------------------------------

def test_slurm_dry_run_prints_the_sbatch_command_and_each_task():
  out = launch("slurm.py", "--nodes=2", "--gpus_per_node=8", "--partition=gpu",
               "--time=12:00:00", "--dry_run", "--", *MAIN_ARGS).stdout
  assert commands(out) == [["sbatch", "--job-name=mim_jax", "--nodes=2", "--ntasks-per-node=8",
                            "--gpus-per-node=8", "--partition=gpu", "--time=12:00:00",
                            "launch/slurm_gpu.sbatch", *MAIN_ARGS]]
  assert "# each of the 16 tasks then runs" in out
  assert "--num_processes=16 --process_id=$SLURM_PROCID --local_device_ids=$SLURM_LOCALID" in out
  out = launch("slurm.py", "--nodes=4", "--gpus_per_node=8", "--tasks_per_node=2",
               "--dry_run", "--", *MAIN_ARGS).stdout
  assert "--ntasks-per-node=2" in commands(out)[0] and "--num_processes=8" in out


def test_slurm_launcher_checks_the_batch_against_the_gpus_before_submitting():
  args = ["--nodes=3", "--gpus_per_node=8", "--dry_run", "--", "--config=configs/quickstart.py",
          "--workdir=/shared/q"]
  result = launch("slurm.py", *args, check=False)  # the config file's batch: 64
  assert result.returncode == 2 and (
      "config.batch_size=64 (the global batch) does not divide over the job's 24 GPUs (3 nodes "
      "× 8): pass --config.batch_size=N with N a multiple of 24 (e.g. 48 or 72)") in result.stderr
  assert launch("slurm.py", *args, "--config.batch_size=48").returncode == 0
  result = launch("slurm.py", "--nodes=2", "--gpus_per_node=8", "--dry_run", "--",
                  *MAIN_ARGS, "--config.batch_size=100", check=False)
  assert result.returncode == 2 and "config.batch_size=100 " in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--nodes=2", "--gpus_per_node=8", "--tasks_per_node=3"], "must divide --gpus_per_node=8"),
    (["--nodes=2", "--gpus_per_node=8", "--", "--config=c.py"], "--workdir=..."),
    (["--nodes=2", "--gpus_per_node=8", "--", *MAIN_ARGS, "--num_processes=2"],
     "drop --coordinator_address"),
])
def test_slurm_launcher_rejects_bad_layouts(args, message):
  result = launch("slurm.py", "--dry_run", *args, check=False)
  assert result.returncode == 2 and message in result.stderr


def test_the_sbatch_script_gives_each_task_its_process_index_and_gpus(tmp_path):
  """2 nodes × 2 tasks × 4 GPUs under a fake srun: coordinator on the first node, process
  ids 0..3, each task two of its node's GPUs."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake_tool(bin_dir, "scontrol", 'printf "gpu07\\ngpu08\\n"\n')
  fake_tool(bin_dir, "srun", """while [[ "$1" == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) "$@" || exit $?
done
""")
  fake_tool(bin_dir, "fake_python", JSON_ARGV)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
             PYTHON=str(bin_dir / "fake_python"), SLURM_JOB_NODELIST="gpu[07-08]",
             SLURM_JOB_ID="1234", SLURM_NTASKS="4", SLURM_JOB_NUM_NODES="2",
             SLURM_NTASKS_PER_NODE="2", SLURM_GPUS_ON_NODE="4")
  result = subprocess.run(["bash", "launch/slurm_gpu.sbatch", *MAIN_ARGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == "mim_jax: 4 processes on 2 nodes, coordinator gpu07:21234"
  assert [json.loads(line) for line in lines[1:]] == [
      ["-m", "mim_jax.main", *MAIN_ARGS, "--coordinator_address=gpu07:21234",
       "--num_processes=4", f"--process_id={i}", f"--local_device_ids={ids}"]
      for i, ids in enumerate(["0,1", "2,3", "0,1", "2,3"])]
  env["SLURM_GPUS_ON_NODE"] = "3"
  result = subprocess.run(["bash", "launch/slurm_gpu.sbatch", *MAIN_ARGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
  assert result.returncode == 2 and "3 GPUs per node do not split over 2 tasks" in result.stderr
