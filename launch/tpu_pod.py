"""Run mim_jax.main on every worker of a Cloud TPU VM (a pod slice or a single host).

python launch/tpu_pod.py --tpu=NAME --zone=ZONE --accelerator_type=v4-32 [--dry_run] \\
    -- --config=configs/mae.py:vit_base --workdir=gs://my-bucket/mae_b16 [--config.x=y ...]

Steps (each a `gcloud compute tpus tpu-vm` command, printed before it runs):
  1. describe the TPU VM; create it if it does not exist (reuse it if it does);
  2. setup (skip with --no_setup): pack this checkout's code (setup.py, mim_jax/,
     configs/, launch/) into a tarball, scp it to all workers, unpack it into
     --remote_dir; or, with --git_url, clone/pull that repository on every worker
     instead of copying. Then make <remote_dir>/.venv a virtual environment of the
     Python that setup.py's python_requires names (the TPU images run Ubuntu 22.04,
     whose python3 is 3.10: python3.11 comes from the deadsnakes PPA) and
     `pip install -e '<remote_dir>[tpu]'` into it (jax[tpu], same jax as setup.py pins);
  3. start `.venv/bin/python -m mim_jax.main <args> --distributed=on` in the background
     on all workers at once (same arguments everywhere; JAX reads the worker layout from
     the TPU metadata server), its output in <remote_dir>/run.log and its pid in run.pid
     on each worker;
  4. stream worker 0's log until its run ends (Ctrl-C stops the streaming, not the run).
--dry_run prints the commands and runs nothing. Running the same command again resumes
from the newest checkpoint in --workdir, which must be storage every worker shares: on a
pod of several hosts a workdir on the workers' own disks (/tmp, ~, a relative path) is
refused, and a path that is not a gs:// URL gets a reminder to mount it on every worker.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_PATHS = ("setup.py", "mim_jax", "configs", "launch")
TARBALL = "mim_jax_code.tar.gz"
VENV = ".venv"  # under --remote_dir
# Where each worker's own disk is mounted (not shared with the other workers).
LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root")


def required_python(setup_py: str = os.path.join(REPO, "setup.py")) -> str:
  """The `X.Y` of setup.py's python_requires=">=X.Y"."""
  with open(setup_py) as f:
    found = re.search(r'python_requires\s*=\s*">=\s*(\d+\.\d+)"', f.read())
  if not found:
    raise ValueError(f"{setup_py} has no python_requires=\">=X.Y\".")
  return found.group(1)


def hosts_of(accelerator_type: str) -> Optional[int]:
  """Hosts of a Cloud TPU slice from its accelerator type: v2/v3/v4/v5p-N count
  TensorCores, 8 per host; v5litepod-N / v5e-N / v6e-N count chips, up to 8 on one
  host and 4 per host beyond. None if the type is not one of these."""
  found = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)", accelerator_type)
  if not found:
    return None
  family, size = found.group(1), int(found.group(2))
  if family in ("v2", "v3", "v4", "v5p"):
    return max(1, size // 8)
  return 1 if size <= 8 else size // 4


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s --tpu NAME --zone ZONE [options] -- <mim_jax.main arguments>")
  parser.add_argument("--tpu", required=True, help="TPU VM name.")
  parser.add_argument("--zone", required=True, help="e.g. us-central2-b.")
  parser.add_argument("--project", help="GCP project (default: gcloud's configured one).")
  parser.add_argument("--accelerator_type", default="v4-8",
                      help="e.g. v4-32, v5p-64: the TPU VM created, and the host count "
                      "that --workdir is checked against.")
  parser.add_argument("--version", default="tpu-ubuntu2204-base",
                      help="TPU VM software version (image), used when creating.")
  parser.add_argument("--spot", action="store_true", help="Create a Spot TPU VM.")
  parser.add_argument("--remote_dir", default="~/mim_jax", help="Code directory on workers.")
  parser.add_argument("--git_url", help="Clone this repository on the workers instead of "
                      "copying the local checkout.")
  parser.add_argument("--git_ref", default="main", help="Branch or tag for --git_url.")
  parser.add_argument("--no_setup", action="store_true",
                      help="Skip copying and installing the code (it is already there).")
  parser.add_argument("--dry_run", action="store_true",
                      help="Print the commands without running anything.")
  parser.add_argument("main_args", nargs="*",
                      help="Arguments for mim_jax.main, after `--`.")
  args = parser.parse_args(argv)
  if not any(a.startswith("--config=") for a in args.main_args) or not any(
      a.startswith("--workdir=") for a in args.main_args):
    parser.error("give mim_jax.main's --config=... and --workdir=... after `--`.")
  if any(a.startswith(("--distributed", "--process_id", "--num_processes"))
         for a in args.main_args):
    parser.error("the launcher sets --distributed=on; drop --distributed, --process_id and "
                 "--num_processes from the mim_jax.main arguments.")
  problem = workdir_problem(args)
  if problem:
    parser.error(problem)
  return args


def workdir_problem(args) -> Optional[str]:
  """Why --workdir cannot serve every host of the pod (None if it can); a path that may
  be a shared mount gets a warning on stderr."""
  workdir = [a for a in args.main_args if a.startswith("--workdir=")][-1].split("=", 1)[1]
  hosts = hosts_of(args.accelerator_type)
  if "://" in workdir or hosts == 1:
    return None
  layout = (f"a {args.accelerator_type} has {hosts} hosts" if hosts else
            f"{args.accelerator_type} may have several hosts")
  local = not workdir.startswith("/") or any(  # relative and ~ paths too
      workdir == d or workdir.startswith(d + "/") for d in LOCAL_DIRS)
  if local and hosts:
    return (f"--workdir={workdir} is on each worker's own disk, but {layout} that must all "
            "write the same checkpoints: use a gs://bucket/run URL or a shared file system "
            "mounted at the same path on every worker (launch/README.md).")
  print(f"Note: --workdir={workdir} must be a shared file system mounted at that path on "
        f"every worker ({layout}); a gs://bucket/run URL needs no mount.", file=sys.stderr)
  return None


def gcloud_tpu(args, verb: str, *extra: str) -> List[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb]
  if verb != "scp":
    cmd.append(args.tpu)
  cmd += list(extra) + [f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def ssh(args, worker: str, command: str) -> List[str]:
  return gcloud_tpu(args, "ssh", f"--worker={worker}", f"--command={command}")


def describe_command(args) -> List[str]:
  return gcloud_tpu(args, "describe", "--format=value(state)")


def create_command(args) -> List[str]:
  extra = [f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
  return gcloud_tpu(args, "create", *extra, *(["--spot"] if args.spot else []))


def pack_command(tarball: str) -> List[str]:
  return ["tar", "-czf", tarball, "-C", REPO, "--exclude=__pycache__", *CODE_PATHS]


def install_command(args) -> str:
  """Shell for a worker: a virtual environment of the Python setup.py requires, in
  <remote_dir>/.venv, with the code installed into it with its `tpu` extra."""
  python = f"python{required_python()}"
  venv = f"{args.remote_dir}/{VENV}"
  get_python = (f"sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -q && "
                f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q {python} "
                f"{python}-venv")
  return (f"({python} -c 'import ensurepip' 2>/dev/null || ({get_python})) && "
          f"{python} -m venv {venv} && {venv}/bin/pip install -q -U pip && "
          f"{venv}/bin/pip install -q -e {args.remote_dir}'[tpu]'")


def setup_commands(args, tarball: str) -> List[Tuple[str, List[str]]]:
  """(what, command) pairs that put the code on every worker and install it."""
  install = install_command(args)
  if args.git_url:
    fetch = (f"(git -C {args.remote_dir} fetch -q origin {shlex.quote(args.git_ref)} && "
             f"git -C {args.remote_dir} checkout -q FETCH_HEAD) || git clone -q --branch "
             f"{shlex.quote(args.git_ref)} {shlex.quote(args.git_url)} {args.remote_dir}")
    return [("clone or update the code on all workers and install it",
             ssh(args, "all", f"{fetch} && {install}"))]
  unpack = (f"mkdir -p {args.remote_dir} && tar -xzf ~/{TARBALL} -C {args.remote_dir} && "
            f"{install}")
  return [("pack this checkout's code", pack_command(tarball)),
          ("copy it to all workers",
           gcloud_tpu(args, "scp", tarball, f"{args.tpu}:~/{TARBALL}", "--worker=all")),
          ("unpack and install it on all workers", ssh(args, "all", unpack))]


def run_command(args) -> List[str]:
  main = shlex.join([f"{VENV}/bin/python", "-m", "mim_jax.main", *args.main_args,
                     "--distributed=on"])
  return ssh(args, "all", f"cd {args.remote_dir} && nohup {main} > run.log 2>&1 < /dev/null "
                          "& echo $! > run.pid")


def stream_command(args) -> List[str]:
  return ssh(args, "0", f"cd {args.remote_dir} && tail -n +1 --pid=$(cat run.pid) -f run.log")


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  tarball = os.path.join(tempfile.gettempdir(), TARBALL)
  describe = ("reuse the TPU VM if it exists", describe_command(args))
  create = ("if it does not: create it", create_command(args))
  steps = []
  if not args.no_setup:
    steps += setup_commands(args, tarball)
  steps += [("start mim_jax.main on all workers", run_command(args)),
            ("stream worker 0's log (Ctrl-C stops the streaming, not the run)",
             stream_command(args))]
  if args.dry_run:
    for comment, cmd in [describe, create] + steps:
      print(f"# {comment}\n{shlex.join(cmd)}")
    return 0
  if run(*describe) != 0:
    steps.insert(0, create)
  for step in steps:
    status = run(*step)
    if status != 0:
      print(f"Failed with status {status}: {shlex.join(step[1])}", file=sys.stderr)
      return status
  return 0


def run(comment: str, cmd: List[str]) -> int:
  print(f"# {comment}\n{shlex.join(cmd)}", flush=True)
  return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
