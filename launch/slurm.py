"""Submit a multi-node GPU pretraining job: sbatch launch/slurm_gpu.sbatch with its layout.

python launch/slurm.py --nodes=4 --gpus_per_node=8 [--tasks_per_node=8] [--partition=P] \\
    [--time=24:00:00] [--dry_run] -- --config=configs/mae.py:vit_base \\
    --workdir=/shared/runs/mae_b16 [--config.x=y ...]

Prints the sbatch command and what every task of the job runs, then submits it (with
--dry_run: only prints). Command-line options override the script's #SBATCH defaults.
Before submitting it checks that config.batch_size (--config.batch_size=..., else the
config file's) divides over the job's nodes × GPUs per node.
"""
import argparse
import os
import runpy
import shlex
import subprocess
import sys
from typing import List, Optional, Sequence

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
  gpus = args.nodes * args.gpus_per_node
  batch_size = config_batch_size(args.main_args)
  if batch_size is not None and batch_size % gpus:
    lower = batch_size // gpus * gpus
    example = f"{lower} or {lower + gpus}" if lower else str(gpus)
    parser.error(f"config.batch_size={batch_size} (the global batch) does not divide over the "
                 f"job's {gpus} GPUs ({args.nodes} nodes × {args.gpus_per_node}): pass "
                 f"--config.batch_size=N with N a multiple of {gpus} (e.g. {example}), or "
                 "change --nodes / --gpus_per_node.")
  return args


def config_batch_size(main_args: Sequence[str]) -> Optional[int]:
  """config.batch_size of the job: its --config.batch_size override, else the config
  file's (read with this checkout's mim_jax; None, with a note, where that fails)."""
  overrides = [a.split("=", 1)[1] for a in main_args if a.startswith("--config.batch_size=")]
  if overrides:
    return int(overrides[-1])
  path = [a.split("=", 1)[1] for a in main_args if a.startswith("--config=")][-1]
  path, _, arg = path.partition(":")
  sys.path.insert(0, REPO)
  try:
    get_config = runpy.run_path(os.path.join(REPO, path))["get_config"]
    return int((get_config(arg) if arg else get_config()).batch_size)
  except Exception as e:  # pylint: disable=broad-except  (any failure to read the config)
    print(f"Note: could not read config.batch_size from {path} ({type(e).__name__}: {e}); "
          "the job checks it when it starts.", file=sys.stderr)
    return None
  finally:
    sys.path.remove(REPO)


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
