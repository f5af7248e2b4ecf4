"""Plan a pod run on this machine: compile the real train step for a TPU slice, no TPU needed.

python -m mim_jax.tools.aot --config=configs/mae.py:vit_large --topology=v5e:16x16 \
    [--config.model.dtype=bfloat16] [--config.field=value ...] [--search] [--output=FILE] \
    [--evals=linear_probe,finetune] [--results=docs/RESULTS.md --results_section=NAME]
python -m mim_jax.tools.aot --config=configs/mae.py:vit_large --topology=v5e:16x16 --plan \
    [--search] [--plan_min_chips=32] [--output=plan.jsonl] [--jpeg_dir=DIR]
python -m mim_jax.tools.aot --check_model [--topology=v5e:2x2]

With the `tpu` extra (pip install -e '.[tpu]': libtpu), `jax.experimental.topologies` describes
the chips of a slice (`--topology`, generation:chips per axis: v5e:16x16 is v5e-256, v4:4x4x4
is v4-128 with 64 chips, v5p:4x4x4 is v5p-128 with 64 chips) and the TPU compiler builds the
trainer's own train step for them (training/state.py's `abstract_state` in the config's
shardings, training/train_step.py's `jit_train_step` with the config's donation, dtype,
remat and scan; `jax.ShapeDtypeStruct` state and batch: nothing is allocated). It prints
whether it compiled (or the compiler's error), per-chip memory against the chip's HBM, XLA's FLOP
count, the step time estimated from the compiler's per-fusion cycle estimates with its
breakdown and heaviest operations (mim_jax/tools/tpu_model.py states the model),
images/s and MFU against the chip's bf16 peak, and the compile time. Step time, images/s
and MFU are compiler estimates, not measurements.

Compile time barely grows with the chip count (the partitioned program is the same on
every chip; docs/RESULTS.md measures 4 to 256 chips), so the slice itself is compiled.
`--proxy` compiles instead on the smallest slice of the generation with the same per-chip
batch, the same FSDP groups and a data axis of at least 2 (4 chips for data parallelism;
FSDP over all chips has no proxy), costing the data-axis collectives at the full slice's
group size; its per-chip figures are within a few percent of the full slice's (the
compiler picks slightly different fusions for large slices; docs/RESULTS.md). `--search`
compiles the sharding modes (FSDP over each of `--fsdp_sizes` chips, 1 being data
parallelism), remat policies and scan_layers, and reports the fastest estimated setting
that leaves at least 10% of HBM free. The collective model has bandwidth but no per-hop
latency, so it cannot charge FSDP over many chips its many ring steps: the default sizes
stop at 16 (a 4x4 sub-torus).

`--plan` compiles (with --search: searches) the step on every slice of --topology's
generation from --plan_min_chips chips up to --topology that the global batch divides over
(v5e: 4x8 to 16x16; v4, v5p: 32 to 256 chips), and tables per slice the fit, HBM headroom,
estimated step time, MFU and images/s, and the recipe's run: its epochs × --train_examples
images (ImageNet-1k by default) ÷ images/s as wall-clock and × chips as chip-hours,
marking the cheapest slice in chip-hours and the fastest. It times the recipe's own input
pipeline on this machine's CPU first (mim_jax/tools/input_pipeline.py: the real JPEGs under
--jpeg_dir, else synthetic ones) and prints per slice the vCPUs one host needs to feed its
chips (its chips × images/s per chip ÷ images per CPU-second here) against the vCPUs that
host has (tpu_model.Chip.host_vcpus), marking a slice the input would slow down
("input-bound"). With --output every compiled setting is appended as a JSON line, and a
rerun lowers each setting again (seconds) and reads back what is there (same config,
slice and lowered program: `Lowering.program_hash`) instead of compiling it again (minutes):
a plan interrupted after hours of compiles resumes, and survives code changes that leave
the compiled program as it was.

`--evals` plans, after --config's own step, the steps of streamed evaluations on its
encoder at their recipes' batch (compiled_step.evaluation_config: the published linear
probe, fine-tuning). With `--results`, a table of every planned step (with --search, its
fastest fitting setting) replaces section `--results_section` (default 'aot') of that
document (mim_jax/tools/results_doc.py).

`--dtype`, `--remat`, `--scan_layers` and `--attention_impl` override the config's model
(mim_jax/tools/step_flags.py). MFU's model FLOPs are XLA's count of the same
step without remat (forward, backward where gradients flow, the optimizer; the frozen
encoder of the linear probe only forward), lowered for one chip's batch on the CPU.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process compiles; it never runs a TPU
# libtpu lets one process per machine load it (/tmp/libtpu_lockfile) unless this is set;
# the planner only compiles, so it may run beside another planner, or beside any JAX
# process without JAX_PLATFORMS=cpu, which loads libtpu while looking for TPUs
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import dataclasses  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from typing import List, Optional, Sequence, Tuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from mim_jax import config_files, sharding  # noqa: E402
from mim_jax.models import vit  # noqa: E402
from mim_jax.tools import input_pipeline, results_doc, step_flags, tpu_model  # noqa: E402
from mim_jax.tools.compiled_step import (  # noqa: E402
    evaluation_config, random_batch, step_name, step_parts, xla_flops)
from mim_jax.training import config as train_config  # noqa: E402
from mim_jax.training.state import abstract_state  # noqa: E402
from mim_jax.training.train_step import jit_train_step  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  step_flags.define_config_flags()
  flags.DEFINE_list("evals", [], "Streamed evaluations to compile after --config's step, on "
                    "its encoder: names of compiled_step.EVAL_CONFIGS (linear_probe, finetune) "
                    "or configs/eval/ specs.")
  flags.DEFINE_string("topology", "v5e:16x16", "TPU slice: generation:chips per axis "
                      f"(generations {sorted(tpu_model.CHIPS)}).")
  flags.DEFINE_bool("proxy", False, "Compile on the smallest slice with the same per-chip "
                    "program (see the module docstring).")
  flags.DEFINE_bool("search", False, "Try sharding modes, remat policies and scan_layers.")
  flags.DEFINE_bool("plan", False, "Compile (with --search: search) the step on every slice "
                    "of --topology's generation from --plan_min_chips chips up to --topology "
                    "that the global batch divides over, and table the published run's "
                    "wall-clock and chip-hours on each.")
  flags.DEFINE_integer("plan_min_chips", 32, "The smallest slice --plan tries.")
  input_pipeline.define_image_flags()
  flags.DEFINE_integer("input_batches", 20, "Batches of 64 --plan times the input pipeline "
                       "over.")
  flags.DEFINE_integer("train_examples", 1281167, "Training images per epoch for --plan's "
                       "wall-clock (default: ImageNet-1k's train split).")
  flags.DEFINE_list("fsdp_sizes", ["1", "4", "16"], "FSDP group sizes --search tries (1: data "
                    "parallel; 'all': every chip).")
  flags.DEFINE_list("remat_policies", ["none", "dots_with_no_batch_dims_saveable", "full"],
                    "Remat policies --search tries, in order of memory saved.")
  flags.DEFINE_list("scan_options", ["false", "true"], "scan_layers values --search tries.")
  flags.DEFINE_string("output", None, "Append each compiled setting's figures to this file "
                      "as a JSON line; a rerun reads the settings it holds instead of "
                      "compiling them again (a long --plan resumes).")
  flags.DEFINE_string("dump_hlo", None, "Write the compiled TPU program's HLO text (with the "
                      "compiler's per-fusion estimates) to this file (with --evals, each "
                      "evaluation's to FILE.<protocol>).")
  flags.DEFINE_bool("check_model", False, "Compare the step-time model with the compiler's "
                    "optimal_seconds on reference programs, then exit.")
  results_doc.define_flags("aot")


# v5e/v6e slice shapes by chip count, and v4/v5p (3-D), smallest first.
SLICE_SHAPES = {2: [(2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16)],
                3: [(2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8),
                    (4, 8, 8), (8, 8, 8), (8, 8, 16), (8, 16, 16), (16, 16, 16)]}


def topology_devices(topology: tpu_model.Topology) -> list:
  """Compile-only TPU devices of the slice (needs libtpu: the `tpu` extra)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    return list(topologies.get_topology_desc(**topology.libtpu_kwargs()).devices)
  except RuntimeError as e:
    if "TPU support not installed" in str(e):
      raise RuntimeError("libtpu is not installed: pip install -e '.[tpu]' (the tpu extra "
                         "pins jax[tpu], whose libtpu compiles for TPUs on any machine).") from e
    raise


def proxy_topology(topology: tpu_model.Topology, fsdp: int) -> tpu_model.Topology:
  """The smallest slice of the generation with ≥ 2 data groups of `fsdp` chips (≥ 4
  chips); the topology itself when there is none smaller."""
  for dims in SLICE_SHAPES[topology.chip.torus_dims]:
    chips = int(np.prod(dims))
    if chips >= max(4, 2 * fsdp) and chips % fsdp == 0 and chips < topology.num_chips:
      return tpu_model.Topology(topology.chip, dims)
  return topology


def abstract_train_step(config, mesh):
  """(jitted train step, state, batch) of `config` on `mesh`, as the training loop
  builds them, with `jax.ShapeDtypeStruct` state and batch (nothing is allocated)."""
  method, tx, lr_fn = step_parts(config)
  state = abstract_state(method, tx, config, mesh=mesh)
  shardings = jax.tree.map(lambda a: a.sharding, state)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype,
                                   sharding=batch_sharding)
           for k, v in random_batch(config, method, 1).items()}
  step = jit_train_step(method, tx, lr_fn, config, mesh, shardings)
  return step, state, batch


def model_flops_per_chip(config, per_chip_batch: int) -> float:
  """XLA's FLOP count of the step for one chip's batch without remat, scan or gradient
  accumulation (the same arithmetic), lowered (not compiled) for one CPU device."""
  plain = config.copy_and_resolve_references()
  # XLA's cost analysis counts a loop body once: no scan over layers or micro-batches
  plain.update(batch_size=per_chip_batch, grad_accum_steps=1)
  plain.model.update(remat="none", scan_layers=False)
  plain.sharding.mode = "data_parallel"
  mesh = sharding.create_mesh(plain, jax.devices("cpu")[:1])
  step, state, batch = abstract_train_step(plain, mesh)
  cost = step.lower(state, batch).cost_analysis()
  return float(cost["flops"])


@dataclasses.dataclass
class Compiled:
  """One setting of a config compiled for a slice: the compiler's verdict and figures."""
  config: object
  topology: tpu_model.Topology
  compiled_on: tpu_model.Topology
  compile_s: float = 0.0
  compile_cpu_s: float = 0.0  # CPU time of this process's threads: less load-dependent
  error: Optional[str] = None
  memory: Optional[tpu_model.Memory] = None
  step_flops: float = 0.0  # XLA, per chip
  model_flops: float = 0.0  # per chip, without remat
  estimate: Optional[tpu_model.StepEstimate] = None
  program_hash: Optional[str] = None  # Lowering.program_hash: what was compiled

  @property
  def fits(self) -> bool:
    return self.error is None and self.memory.fits(self.topology.chip)

  @property
  def step_s(self) -> float:
    return self.estimate.seconds

  @property
  def mfu(self) -> float:
    return tpu_model.mfu(self.model_flops, self.step_s, self.topology.chip)

  @property
  def images_per_s(self) -> float:
    return tpu_model.images_per_second(self.config.batch_size, self.step_s)

  @property
  def calibrated_mfu(self) -> Optional[float]:
    return tpu_model.calibrated_mfu(self.mfu, self.topology.chip)

  def mfu_text(self) -> str:
    """'29.3%', with ' (calibrated 41.0%)' where the chip has a calibration."""
    calibrated = self.calibrated_mfu
    return f"{self.mfu:.1%}" + ("" if calibrated is None else f" (calibrated {calibrated:.1%})")


@dataclasses.dataclass
class Lowering:
  """A config's train step lowered for a slice (or its proxy), not yet compiled."""
  compiled: Compiled  # the figures to fill in
  config: object  # the config as compiled (synthetic data; the proxy's batch)
  mesh_shape: dict
  started: Tuple[float, float]  # perf_counter, process_time at the start
  lowered: object = None  # jax.stages.Lowered; None when lowering failed (compiled.error)

  @functools.cached_property
  def program_hash(self) -> Optional[str]:
    """The lowered program without source locations (StableHLO text) and the jax and
    libtpu versions: equal exactly when the compiler gets the same program, whatever
    code around it changed. Serialised once: a Records lookup and the record it saves
    read the same hash."""
    if self.lowered is None:
      return None
    return program_hash(self.lowered.as_text(debug_info=False))


def program_hash(stablehlo: str) -> str:
  versions = jax.__version__ + (f" {importlib.metadata.version('libtpu')}"
                                if importlib.util.find_spec("libtpu") else "")
  return hashlib.sha1(f"{versions}\n{stablehlo}".encode()).hexdigest()[:12]


def lower_for_slice(config, topology: tpu_model.Topology, proxy: bool = False) -> Lowering:
  """Lower `config`'s train step for `topology` (or its proxy)."""
  hosts = max(topology.num_chips // 4, 1)
  compiled_config = config.copy_and_resolve_references()
  # the input pipeline is not part of the step; schedules that count the dataset's steps
  # (Latent MIM's regulariser goal) then need no ImageNet files, and change only constants
  compiled_config.data.source = "synthetic"
  train_config.validate(compiled_config, topology.num_chips, hosts)
  mesh = sharding.create_mesh(compiled_config, topology_devices(topology))
  data, fsdp = mesh.shape["data"], mesh.shape["fsdp"]
  target = proxy_topology(topology, fsdp) if proxy else topology
  if target != topology:
    compiled_config.batch_size = config.batch_size // topology.num_chips * target.num_chips
    compiled_config.sharding.fsdp_size = fsdp
    mesh = sharding.create_mesh(compiled_config, topology_devices(target))
  lowering = Lowering(Compiled(config, topology, target), compiled_config,
                      {"axis_0": data, "axis_1": fsdp},
                      (time.perf_counter(), time.process_time()))
  try:
    step, state, batch = abstract_train_step(compiled_config, mesh)
    lowering.lowered = step.lower(state, batch)
  except Exception as e:  # pylint: disable=broad-except  # the tracer's verdict
    lowering.compiled.error = f"{type(e).__name__}: {e}".strip()
  return lowering


def compile_lowered(lowering: Lowering, dump_hlo: Optional[str] = None) -> Compiled:
  """Compile a lowered step and estimate it; with `dump_hlo`, write the compiled
  program's text there."""
  compiled, (start, start_cpu) = lowering.compiled, lowering.started
  if compiled.error is None:
    try:
      executable = lowering.lowered.compile()
    except Exception as e:  # pylint: disable=broad-except  # the compiler's verdict
      compiled.error = f"{type(e).__name__}: {e}".strip()
  compiled.compile_s = time.perf_counter() - start
  compiled.compile_cpu_s = time.process_time() - start_cpu
  compiled.program_hash = lowering.program_hash  # a compiler error is a result too
  if compiled.error is not None:
    return compiled
  text = executable.as_text()
  if dump_hlo:
    with open(dump_hlo, "w") as f:
      f.write(text)
  compiled.memory = tpu_model.memory_from_analysis(executable.memory_analysis())
  compiled.step_flops = xla_flops(executable)
  compiled.model_flops = model_flops_per_chip(
      lowering.config, compiled.config.batch_size // compiled.topology.num_chips)
  compiled.estimate = tpu_model.estimate_step_time(text, compiled.topology.chip,
                                                   axis_sizes=lowering.mesh_shape)
  return compiled


def compile_for_slice(config, topology: tpu_model.Topology, proxy: bool = False,
                      dump_hlo: Optional[str] = None) -> Compiled:
  """Compile `config`'s train step for `topology` (or its proxy) and estimate it; with
  `dump_hlo`, write the compiled program's text there."""
  return compile_lowered(lower_for_slice(config, topology, proxy), dump_hlo)


def json_record(compiled: Compiled) -> dict:
  """The figures of a compiled setting as plain values (one JSON line of --output)."""
  config = compiled.config
  record = dict(config_hash=config_hash(config), program_hash=compiled.program_hash,
                method=step_name(config),
                width=config.model.width,
                depth=config.model.depth, patch=config.model.patch_size,
                image=config.data.image_size, batch=config.batch_size,
                dtype=config.model.dtype, setting=setting(config),
                topology=compiled.topology.name, compiled_on=compiled.compiled_on.name,
                compile_s=round(compiled.compile_s, 1),
                compile_cpu_s=round(compiled.compile_cpu_s, 1), error=compiled.error)
  if compiled.error is None:
    record.update(memory=dataclasses.asdict(compiled.memory),
                  total_gib=compiled.memory.total / 2**30, fits=compiled.fits,
                  step_flops=compiled.step_flops, model_flops=compiled.model_flops,
                  step_s=compiled.step_s, images_per_s=compiled.images_per_s, mfu=compiled.mfu,
                  by_class=compiled.estimate.by_class, top_ops=compiled.estimate.top_ops(10),
                  collective_s=compiled.estimate.collective_seconds)
  return record


def config_hash(config) -> str:
  return config_files.fingerprint(config, 12)


def from_record(config, topology: tpu_model.Topology, record: dict) -> Compiled:
  """The `Compiled` that `json_record` wrote (of its operations, the ten heaviest)."""
  compiled = Compiled(config, topology, tpu_model.parse_topology(record["compiled_on"]),
                      record["compile_s"], record["compile_cpu_s"], record["error"],
                      program_hash=record["program_hash"])
  if compiled.error is None:
    compiled.memory = tpu_model.Memory(**record["memory"])
    compiled.step_flops, compiled.model_flops = record["step_flops"], record["model_flops"]
    compiled.estimate = tpu_model.StepEstimate(
        seconds=record["step_s"], by_class=record["by_class"],
        by_op=dict(record.get("top_ops", [])), collective_seconds=record["collective_s"])
  return compiled


class Records:
  """The JSON lines of --output: what this and earlier runs compiled, by config, slice and
  lowered program (`Lowering.program_hash`); `compile` lowers a setting (seconds) and
  reads its compiled figures back when that program is there, compiles (minutes) and
  appends it otherwise. Code changes that leave the program as it was keep its records."""

  def __init__(self, path: Optional[str]):
    self.path, self.found = path, {}
    if path and os.path.exists(path):
      with open(path) as f:
        for line in f:
          record = json.loads(line)
          if record.get("program_hash"):
            key = (record["config_hash"], record["topology"], record["program_hash"])
            self.found[key] = record

  def save(self, compiled: Compiled) -> None:
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(json_record(compiled)) + "\n")

  def compile(self, config, topology: tpu_model.Topology, proxy: bool = False,
              dump_hlo: Optional[str] = None) -> Compiled:
    lowering = lower_for_slice(config, topology, proxy)
    record = self.found.get((config_hash(config), topology.name, lowering.program_hash))
    if record is not None and dump_hlo is None:
      return from_record(config, topology, record)
    compiled = compile_lowered(lowering, dump_hlo)
    self.save(compiled)
    return compiled


def setting(config) -> str:
  mode = config.sharding.mode
  if mode == "fsdp":
    mode += f"({config.sharding.fsdp_size if config.sharding.fsdp_size > 0 else 'all'})"
  return (f"{mode}, remat={vit.remat_policy_name(config.model.remat)}, "
          f"scan_layers={config.model.scan_layers}")


def gib(n: float) -> str:
  return f"{n / tpu_model.GIB:.2f} GiB"


def report(compiled: Compiled) -> str:
  """The figures of one compiled setting, as printed."""
  topo, chip, config = compiled.topology, compiled.topology.chip, compiled.config
  per_chip = config.batch_size // topo.num_chips
  lines = [f"{step_name(config)} width={config.model.width} depth={config.model.depth} "
           f"patch={config.model.patch_size} image={config.data.image_size} on {topo.name} "
           f"({topo.num_chips} chips): batch {config.batch_size} ({per_chip} per chip), "
           f"dtype={config.model.dtype}, {setting(config)}"]
  where = ("" if compiled.compiled_on == topo else
           f" on the proxy {compiled.compiled_on.name} ({compiled.compiled_on.num_chips} chips, "
           f"batch {per_chip * compiled.compiled_on.num_chips}: the same per-chip program)")
  if compiled.error is not None:
    lines.append(f"  compile: FAILED after {compiled.compile_s:.1f} s{where}: {compiled.error}")
    return "\n".join(lines)
  m = compiled.memory
  lines.append(f"  compile: ok in {compiled.compile_s:.1f} s "
               f"({compiled.compile_cpu_s:.0f} CPU-s){where}")
  verdict = (f"fits with >= {tpu_model.HEADROOM:.0%} headroom" if m.fits(chip) else
             f"does NOT fit with {tpu_model.HEADROOM:.0%} headroom")
  lines.append(f"  memory per chip: arguments {gib(m.arguments)}, outputs {gib(m.outputs)} "
               f"({gib(m.aliased)} aliased to donated arguments), temporaries "
               f"{gib(m.temporaries)}, code {gib(m.code)}; total {gib(m.total)} of "
               f"{gib(chip.hbm_bytes)} HBM ({m.headroom(chip):.0%} free): {verdict}")
  est = compiled.estimate
  lines.append(f"  FLOPs per chip per step (XLA): {compiled.step_flops:.3e}"
               + (" (XLA counts each of the program's loop bodies once)" if est.loops else "")
               + f"; model (no remat) {compiled.model_flops:.3e} = "
               f"{compiled.model_flops / per_chip / 1e9:.1f} GFLOP per image")
  parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in
                    sorted(est.by_class.items(), key=lambda kv: -kv[1]) if v > 5e-5)
  lines.append(f"  step time (compiler estimate): {est.seconds * 1e3:.1f} ms = {parts} ms; "
               f"collectives {est.collective_seconds * 1e3:.1f} ms before overlap"
               + (f"; {est.unknown_trip_counts} loops of unknown trip count counted once"
                  if est.unknown_trip_counts else ""))
  lines.append("  heaviest operations (estimate, ms): " + "; ".join(
      f"{name} {seconds * 1e3:.1f}" for name, seconds in est.top_ops(6)))
  lines.append(f"  throughput (compiler estimate): {compiled.images_per_s:,.0f} images/s "
               f"({compiled.images_per_s / topo.num_chips:.1f} per chip); MFU (estimate) "
               f"{compiled.mfu_text()} of {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 per "
               "chip")
  calibration = tpu_model.CALIBRATIONS.get(chip.name)
  if calibration is not None:
    lines.append(f"  calibration: x{calibration.factor:.2f} ({calibration.source}); it covers "
                 "matmul-bound steps (mim_jax/tools/calibration.py)")
  return "\n".join(lines)


def candidate_configs(config, num_chips: int, fsdp_sizes: Sequence[str],
                      remat_policies: Sequence[str], scan_options: Sequence[bool]):
  """Lists of configs, one per (scan_layers value, sharding): the remat policies in order
  of memory saved; the search stops a list at its first setting that fits (more remat only
  adds recomputation)."""
  shardings = []
  for size in fsdp_sizes:
    n = num_chips if size == "all" else int(size)
    mode = "data_parallel" if n == 1 else "fsdp"
    if 1 <= n <= num_chips and num_chips % n == 0 and (mode, n) not in shardings:
      shardings.append((mode, n))
  groups = []
  for scan in scan_options:
    for mode, size in shardings:
      chain = []
      for remat in remat_policies:
        c = config.copy_and_resolve_references()
        c.sharding.mode = mode
        c.sharding.fsdp_size = size if mode == "fsdp" else -1
        c.model.remat = remat
        c.model.scan_layers = scan
        chain.append(c)
      groups.append(chain)
  return groups


def search(config, topology: tpu_model.Topology, proxy: bool, fsdp_sizes: Sequence[str],
           remat_policies: Sequence[str], scan_options: Sequence[bool],
           log=lambda c: print(summary_row(c)), compile_fn=None) -> List[Compiled]:
  """Every compiled setting (see `candidate_configs`, compiled by `compile_fn`, default
  `compile_for_slice`); `log(compiled)` as each finishes."""
  compile_fn = compile_fn or compile_for_slice
  tried = []
  for chain in candidate_configs(config, topology.num_chips, fsdp_sizes, remat_policies,
                                 scan_options):
    for candidate in chain:
      compiled = compile_fn(candidate, topology, proxy)
      tried.append(compiled)
      log(compiled)
      if compiled.fits:
        break
  return tried


def best(tried: Sequence[Compiled]) -> Optional[Compiled]:
  """The fastest (estimated) setting that fits with the headroom, or None."""
  fitting = [c for c in tried if c.fits]
  return min(fitting, key=lambda c: c.step_s) if fitting else None


def summary_row(compiled: Compiled) -> str:
  if compiled.error is not None:
    return f"  {setting(compiled.config)}: compile failed ({first_line(compiled.error)})"
  chip = compiled.topology.chip
  return (f"  {setting(compiled.config)}: {gib(compiled.memory.total)} per chip "
          f"({compiled.memory.headroom(chip):.0%} free{'' if compiled.fits else ', too full'}), "
          f"step {compiled.step_s * 1e3:.1f} ms, {compiled.images_per_s:,.0f} images/s, "
          f"MFU {compiled.mfu_text()} (estimates), compile {compiled.compile_s:.0f} s")


def first_line(error: str) -> str:
  """A compiler error in one line: for out-of-memory, what it needed of the HBM it had."""
  hbm = re.search(r"\(([\d.]+\w)\) exceeds available HBM \(([\d.]+\w)\)", error)
  if hbm:
    return f"out of HBM: needs {hbm.group(1)} of {hbm.group(2)}"
  return error.splitlines()[0][:200]


def check_model(topology: tpu_model.Topology) -> List[str]:
  """Rows comparing `estimate_step_time` with the compiler's cost analysis: on one chip of
  `topology`, a bf16 matmul (compute-bound: optimal_seconds = FLOPs / peak), elementwise
  and reduction programs (HBM-bound), a 12-step scan against 12 unrolled steps; on all its
  chips, an all-gather, an all-reduce and 4 matmuls with FSDP-sharded weights (whose
  weight all-gathers can overlap the matmuls)."""
  devices = topology_devices(topology)
  named = lambda mesh, *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  one = jax.sharding.Mesh(np.asarray(devices[:1]), ("x",))
  every = jax.sharding.Mesh(np.asarray(devices), ("x",))
  spec = lambda shape, dtype, mesh=one, *s: jax.ShapeDtypeStruct(shape, dtype,
                                                                 sharding=named(mesh, *s))
  body = lambda x, w: jnp.tanh(x @ w)

  def scanned(x, w):
    return jax.lax.scan(lambda c, _: (body(c, w), None), x, None, length=12)[0]

  def unrolled(x, w):
    for _ in range(12):
      x = body(x, w)
    return x

  def fsdp_layers(x, *ws):
    for w in ws:
      x = body(x, w)
    return x

  n, d = 8192, len(devices)
  programs = [
      ("matmul bf16 8192^3", lambda a, b: a @ b, [spec((n, n), jnp.bfloat16)] * 2, None),
      ("add bf16 8192x32768", lambda a, b: a + b, [spec((n, 4 * n), jnp.bfloat16)] * 2, None),
      ("scale f32 8192x32768", lambda a: a * 2, [spec((n, 4 * n), jnp.float32)], None),
      ("exp f32 8192x16384", jnp.exp, [spec((n, 2 * n), jnp.float32)], None),
      ("row sum f32 32768x8192", lambda a: a.sum(1), [spec((4 * n, n), jnp.float32)], None),
      ("tanh(x@w) unrolled x12", unrolled, [spec((4096, 1024), jnp.bfloat16),
                                            spec((1024, 1024), jnp.bfloat16)], None),
      ("tanh(x@w) scan x12", scanned, [spec((4096, 1024), jnp.bfloat16),
                                       spec((1024, 1024), jnp.bfloat16)], None),
      (f"all-gather bf16 8192^2 over {d} chips", lambda a: a,
       [spec((n, n), jnp.bfloat16, every, "x")], named(every)),
      (f"all-reduce f32 8192^2 over {d} chips", lambda a: a.sum(0),
       [spec((d, n, n), jnp.float32, every, "x")], named(every)),
      (f"4 x tanh(x@w), w sharded over {d} chips", fsdp_layers,
       [spec((d * 4096, 4096), jnp.bfloat16, every, "x")]
       + [spec((4096, 4096), jnp.bfloat16, every, None, "x")] * 4, named(every, "x")),
  ]
  chip = topology.chip
  rows = [f"{chip.name}: clock {chip.clock_hz / 1e9:.3f} GHz; program: XLA FLOPs, bytes; "
          f"compiler optimal_seconds; our estimate (cycles; collectives); estimate / optimal"]
  for name, fn, args, out in programs:
    compiled = jax.jit(fn, out_shardings=out).lower(*args).compile()
    cost = compiled.cost_analysis()
    est = tpu_model.estimate_step_time(compiled.as_text(), chip)
    optimal = cost.get("optimal_seconds", float("nan"))
    rows.append(f"  {name}: {cost.get('flops', 0.0):.3e} FLOP, {cost['bytes accessed']:.3e} B; "
                f"{optimal * 1e3:.3f} ms; {est.seconds * 1e3:.3f} ms ({est.cycles} cycles"
                + (f"; collectives {est.collective_seconds * 1e3:.3f} ms, exposed "
                   f"{est.by_class.get('collective (exposed)', 0.0) * 1e3:.3f} ms"
                   if est.collective_seconds else "")
                + f"); {est.seconds / optimal:.2f}")
  return rows


def results_table(rows: Sequence[Tuple[object, Optional[Compiled]]],
                  topology: tpu_model.Topology) -> str:
  """Markdown table of (config, its step compiled for `topology`; None: no searched setting
  fit) pairs, for --results."""
  lines = ["| step | image | global batch (per chip) | dtype | setting | fits | GiB per chip | "
           "step ms | images/s | model GFLOP/image | MFU | compile wall / CPU s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for config, compiled in rows:
    m = config.model
    per_chip = config.batch_size // topology.num_chips
    row = (f"| {step_name(config)} {m.width}w×{m.depth}, patch {m.patch_size} | "
           f"{config.data.image_size} | {config.batch_size} ({per_chip}) | {m.dtype} | ")
    if compiled is None:
      lines.append(row + "searched | nothing fits |" + " — |" * 6)
      continue
    row += f"{setting(compiled.config)} | "
    if compiled.error is not None:
      lines.append(row + f"compile failed: {first_line(compiled.error)} |" + " — |" * 5
                   + f" {compiled.compile_s:.0f} / {compiled.compile_cpu_s:.0f} |")
      continue
    lines.append(row + f"{'yes' if compiled.fits else 'no'} | "
                 f"{compiled.memory.total / tpu_model.GIB:.2f} | {compiled.step_s * 1e3:.1f} | "
                 f"{compiled.images_per_s:,.0f} | {compiled.model_flops / per_chip / 1e9:.1f} | "
                 f"{compiled.mfu_text()} | "
                 f"{compiled.compile_s:.0f} / {compiled.compile_cpu_s:.0f} |")
  return "\n".join(lines) + (
      f"\n\n{topology.name}: {topology.num_chips} chips. Step time, images/s and MFU (of "
      f"{topology.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 per chip) are compiler "
      "estimates (mim_jax/tools/tpu_model.py), not measurements; GiB per chip: the "
      "compiler's buffer assignment; model FLOPs: XLA's count of the step without remat.\n")


def plan_slices(topology: tpu_model.Topology, min_chips: int,
                global_batch: int) -> List[tpu_model.Topology]:
  """The slices of `topology`'s generation (SLICE_SHAPES) from `min_chips` chips up to
  `topology` itself, smallest first, over whose chips `global_batch` divides."""
  sizes = [(dims, int(np.prod(dims))) for dims in SLICE_SHAPES[topology.chip.torus_dims]]
  return [tpu_model.Topology(topology.chip, dims) for dims, chips in sizes
          if min_chips <= chips <= topology.num_chips and global_batch % chips == 0]


def run_images(config, train_examples: int) -> float:
  """Images the recipe's run trains on: its epochs × `train_examples` (or its steps ×
  its global batch)."""
  if config.num_train_steps >= 0:
    return float(config.num_train_steps * config.batch_size)
  return config.num_epochs * train_examples


def host_input_vcpus(compiled: Compiled, images_per_cpu_s: float) -> Tuple[float, int]:
  """(vCPUs one host of `compiled`'s slice needs to feed its chips at the step's
  images/s, given the input pipeline's images per CPU-second; the vCPUs it has). A slice
  smaller than a host gets that share of the host."""
  chip, chips = compiled.topology.chip, compiled.topology.num_chips
  host_chips = min(chip.host_chips, chips)
  needed = host_chips * compiled.images_per_s / chips / images_per_cpu_s
  return needed, chip.host_vcpus * host_chips // chip.host_chips


def plan_table(config, rows: Sequence[Tuple[tpu_model.Topology, Optional[Compiled]]],
               images: float, input_rate: input_pipeline.InputRate) -> str:
  """Markdown table of (slice, its compiled step or None when nothing fit) pairs: fit, HBM
  headroom, step time, MFU, images/s, the run's wall-clock (`images` ÷ images/s) and
  chip-hours (× chips), and the vCPUs a host needs for its input at `input_rate` against
  those it has; the cheapest slice in chip-hours and the fastest marked, and each whose
  input needs more vCPUs than its host has marked input-bound."""
  fitting = [(t, c) for t, c in rows if c is not None and c.fits]
  hours = {t.name: images / c.images_per_s / 3600 for t, c in fitting}
  chip_hours = {t.name: hours[t.name] * t.num_chips for t, _ in fitting}
  marks = {}
  if fitting:
    for mark, table in (("cheapest", chip_hours), ("fastest", hours)):
      name = min(table, key=table.get)
      marks[name] = marks.get(name, ()) + (mark,)
  lines = ["| slice | chips | batch per chip | setting | fits | HBM free | step ms | MFU | "
           "images/s | wall-clock (h) | chip-hours | input vCPUs per host | |",
           "|" + " --- |" * 13]
  for t, c in rows:
    head = f"| {t.name} | {t.num_chips} | {config.batch_size // t.num_chips} | "
    if c is None:
      lines.append(head + "searched | nothing fits |" + " — |" * 8)
    elif c.error is not None:
      lines.append(head + f"{setting(c.config)} | compile failed: {first_line(c.error)} |"
                   + " — |" * 8)
    else:
      run = (f"{hours[t.name]:,.1f} | {chip_hours[t.name]:,.0f}" if t.name in hours
             else "— | —")
      needed, has = host_input_vcpus(c, input_rate.images_per_cpu_s)
      if needed > has:
        marks[t.name] = marks.get(t.name, ()) + ("input-bound",)
      lines.append(head + f"{setting(c.config)} | {'yes' if c.fits else 'no'} | "
                   f"{c.memory.headroom(t.chip):.0%} | {c.step_s * 1e3:.1f} | {c.mfu_text()} | "
                   f"{c.images_per_s:,.0f} | {run} | {needed:,.0f} of {has} | "
                   f"{', '.join(marks.get(t.name, ()))} |")
  return "\n".join(lines) + (
      f"\n\n{step_name(config)} {config.model.width}w×{config.model.depth}, global batch "
      f"{config.batch_size}, dtype {config.model.dtype}: {images:,.0f} training images. "
      "Step time, MFU, images/s and so wall-clock and chip-hours are compiler estimates "
      f"(mim_jax/tools/tpu_model.py), not measurements; a setting fits with "
      f"{tpu_model.HEADROOM:.0%} of HBM free; evaluations are not counted. Input: the "
      f"recipe's pipeline decoded {input_rate.images_per_cpu_s:.0f} images per CPU-second "
      f"on {input_rate.source} on this machine's CPU ({input_pipeline.cpu_model()}); a "
      "host needs its chips' images/s over that, and has the vCPUs of its machine type "
      "(tpu_model.Chip.host_vcpus), which also run the training loop.\n")


def compile_or_search(config, topology: tpu_model.Topology, dump_hlo: Optional[str],
                      records: Records) -> Optional[Compiled]:
  """Compile `config`'s step for `topology` (with --search, each setting; settings in
  `records` are read back) and print it; the compiled step (with --search the fastest
  setting that fits, None when none does)."""
  if not FLAGS.search:
    compiled = records.compile(config, topology, FLAGS.proxy, dump_hlo)
    print(report(compiled), flush=True)
    return compiled
  scans = [s.lower() in ("true", "1") for s in FLAGS.scan_options]
  print(f"search for {step_name(config)} on {topology.name}: batch {config.batch_size}, "
        f"dtype={config.model.dtype} (step time, images/s, MFU: compiler estimates)",
        flush=True)
  tried = search(config, topology, FLAGS.proxy, FLAGS.fsdp_sizes, FLAGS.remat_policies,
                 scans, log=lambda c: print(summary_row(c), flush=True),
                 compile_fn=records.compile)
  chosen = best(tried)
  if chosen is None:
    totals = [c.memory.total for c in tried if c.memory is not None]
    print(f"nothing fits on {topology.name} with {tpu_model.HEADROOM:.0%} HBM headroom"
          + (f"; the smallest compiled setting needs {gib(min(totals))} per chip of "
             f"{gib(topology.chip.hbm_bytes)}" if totals else ""))
    return None
  print("fastest setting that fits (estimate):")
  print(report(chosen), flush=True)
  return chosen


def main(argv):
  del argv
  results_doc.requested_section()  # a bad --results_section fails first
  topology = tpu_model.parse_topology(FLAGS.topology)
  if FLAGS.check_model:
    print("\n".join(check_model(topology)))
    return
  if FLAGS.config is None:
    raise app.UsageError("--config is required (or --check_model).")
  config = FLAGS.config
  step_flags.apply_overrides(config)
  records = Records(FLAGS.output)
  if FLAGS.plan:
    if FLAGS.evals or FLAGS.dump_hlo:
      raise app.UsageError("--plan plans --config's own step: drop --evals and --dump_hlo.")
    slices = plan_slices(topology, FLAGS.plan_min_chips, config.batch_size)
    if not slices:
      raise app.UsageError(f"No {topology.chip.name} slice of {FLAGS.plan_min_chips} to "
                           f"{topology.num_chips} chips divides the global batch "
                           f"{config.batch_size}: change --plan_min_chips or --topology.")
    input_rate = input_pipeline.measure(config, FLAGS.jpeg_dir, 64, FLAGS.input_batches,
                                        FLAGS.num_images)
    print(f"input pipeline: {input_rate.images_per_cpu_s:.1f} images per CPU-second on "
          f"{input_rate.source}", flush=True)
    rows = [(t, compile_or_search(config, t, None, records)) for t in slices]
    table = plan_table(config, rows, run_images(config, FLAGS.train_examples), input_rate)
    print(table)
    results_doc.write_from_flags("mim_jax.tools.aot", f"Pod plan: {step_name(config)} on "
                                 f"{topology.chip.name} slices", table)
    return
  configs = [config] + [evaluation_config(name, config) for name in FLAGS.evals]
  rows = []
  for c in configs:
    dump = FLAGS.dump_hlo and (FLAGS.dump_hlo if c is config else
                               f"{FLAGS.dump_hlo}.{c.protocol}")
    rows.append((c, compile_or_search(c, topology, dump, records)))
  title = f"Train steps compiled for {topology.name}" + (
      ": the fastest searched settings" if FLAGS.search else "")
  results_doc.write_from_flags("mim_jax.tools.aot", title, results_table(rows, topology))


if __name__ == "__main__":
  define_flags()
  app.run(main)
