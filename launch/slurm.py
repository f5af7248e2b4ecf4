"""Submit a multi-node GPU pretraining job: sbatch launch/slurm_gpu.sbatch with its layout.

python launch/slurm.py --nodes=4 --gpus_per_node=8 [--tasks_per_node=8] [--partition=P] \\
    [--time=24:00:00] [--dry_run] -- --config=configs/mae_vit_base.py \\
    --workdir=/shared/runs/mae_b16 [--config.x=y ...]

Prints the sbatch command and what every task of the job runs, then submits it (with
--dry_run: only prints). Command-line options override the script's #SBATCH defaults.
"""
import argparse
import os
import shlex
import subprocess
import sys
from typing import List, Sequence

SCRIPT = os.path.join("launch", "slurm_gpu.sbatch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s --nodes N --gpus_per_node G [options] -- <mim_jax.main arguments>")
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, required=True)
  parser.add_argument("--tasks_per_node", type=int,
                      help="Processes per node (default: one per GPU); must divide "
                      "--gpus_per_node.")
  parser.add_argument("--partition")
  parser.add_argument("--account")
  parser.add_argument("--time", help="Time limit, e.g. 24:00:00.")
  parser.add_argument("--job_name", default="mim_jax")
  parser.add_argument("--cpus_per_task", type=int)
  parser.add_argument("--dry_run", action="store_true",
                      help="Print the commands without submitting anything.")
  parser.add_argument("main_args", nargs="*", help="Arguments for mim_jax.main, after `--`.")
  args = parser.parse_args(argv)
  args.tasks_per_node = args.tasks_per_node or args.gpus_per_node
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error("--nodes and --gpus_per_node must be at least 1.")
  if args.tasks_per_node < 1 or args.gpus_per_node % args.tasks_per_node:
    parser.error(f"--tasks_per_node={args.tasks_per_node} must divide "
                 f"--gpus_per_node={args.gpus_per_node}.")
  if not any(a.startswith("--config=") for a in args.main_args) or not any(
      a.startswith("--workdir=") for a in args.main_args):
    parser.error("give mim_jax.main's --config=... and --workdir=... after `--`.")
  if any(a.startswith(("--coordinator_address", "--process_id", "--num_processes",
                       "--local_device_ids", "--distributed")) for a in args.main_args):
    parser.error("the job script sets the process layout; drop --coordinator_address, "
                 "--num_processes, --process_id, --local_device_ids and --distributed.")
  return args


def sbatch_command(args) -> List[str]:
  cmd = ["sbatch", f"--job-name={args.job_name}", f"--nodes={args.nodes}",
         f"--ntasks-per-node={args.tasks_per_node}", f"--gpus-per-node={args.gpus_per_node}"]
  for name in ("partition", "account", "time"):
    if getattr(args, name):
      cmd.append(f"--{name}={getattr(args, name)}")
  if args.cpus_per_task:
    cmd.append(f"--cpus-per-task={args.cpus_per_task}")
  return cmd + [SCRIPT] + list(args.main_args)


def task_command(args) -> List[str]:
  """What task SLURM_PROCID runs (shell variables left for the job to fill in)."""
  per_task = args.gpus_per_node // args.tasks_per_node
  devices = ("$SLURM_LOCALID" if per_task == 1 else
             f"<GPUs {per_task}·$SLURM_LOCALID .. {per_task}·$SLURM_LOCALID+{per_task - 1}>")
  return ["python", "-m", "mim_jax.main", *args.main_args,
          "--coordinator_address=<first node>:<20000 + job id % 20000>",
          f"--num_processes={args.nodes * args.tasks_per_node}",
          "--process_id=$SLURM_PROCID", f"--local_device_ids={devices}"]


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  sbatch = sbatch_command(args)
  print(f"# submit (from {REPO})\n{shlex.join(sbatch)}")
  print(f"# each of the {args.nodes * args.tasks_per_node} tasks then runs\n# "
        + " ".join(task_command(args)), flush=True)
  if args.dry_run:
    return 0
  return subprocess.run(sbatch, cwd=REPO, check=False).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
