"""TPU chips and topologies, and a step-time estimate read from a compiled TPU program.

The planner behind `python -m mim_jax.tools.aot`; pure Python (no libtpu needed), so
its arithmetic is tested on any machine.

Step-time model (`estimate_step_time`), applied to the scheduled HLO that
`compiled.as_text()` gives for a TPU target:
  - compute: the TPU compiler writes `estimated_cycles` into the backend config of each
    fusion (and of the few unfused ops it costs); the instructions of a computation run in
    the printed (scheduled) order, one at a time, so a computation takes the sum of its
    cycles, converted to seconds with the chip's clock (`Chip.clock_hz`);
  - loops: a `while` costs its body times the trip count (from the backend config's
    `known_trip_count`, else from the loop condition `i < N` and the start value of i),
    plus its condition once more than that; `call` costs the callee, `conditional` its
    most expensive branch;
  - collectives (all-gather, all-reduce, reduce-scatter, all-to-all, collective-permute,
    the TPU compiler's async-collective-start/done fusions and its all-reduce-scatter
    fusions) carry no cycle estimate: each costs the bytes a chip sends in a ring algorithm
    over its replica group ((n − 1)/n of the gathered or scattered array, twice that for an
    all-reduce) divided by the chip's collective bandwidth (`Chip.collective_bytes_per_s`);
    collectives run one at a time on the interconnect; an asynchronous one (start ... done)
    overlaps the compute scheduled between its start and its done, and only what is left
    at the done is exposed; a synchronous one is exposed whole;
  - asynchronous copies and slices (copy-start/done, slice-start/done: DMA between HBM and
    on-chip memory) are taken as hidden behind compute; an op without a cycle estimate
    that is not a collective (e.g. a gather fusion) costs its operand and result bytes over
    the chip's HBM bandwidth.
Everything this gives is a compiler estimate, not a measurement.
"""
import dataclasses
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

HEADROOM = 0.10  # a setting "fits" when it uses at most (1 − HEADROOM) of the chip's HBM
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation, per chip. `mxu_flops_per_cycle` = TensorCores × MXUs × 2·side²;
  the clock (peak / that) converts the compiler's cycle estimates to seconds."""
  name: str
  libtpu_prefix: str  # how libtpu's topology names spell the generation
  megacore: bool  # two TensorCores shown as one device
  torus_dims: int
  peak_bf16_flops: float
  hbm_bytes: int
  hbm_bytes_per_s: float
  collective_bytes_per_s: float
  mxu_flops_per_cycle: int
  host_chips: int  # chips per host (TPU VM) of a multi-host slice
  host_vcpus: int  # that host's vCPUs, which feed its chips
  sources: Tuple[str, ...]

  @property
  def clock_hz(self) -> float:
    return self.peak_bf16_flops / self.mxu_flops_per_cycle


# Per chip, quoted from Google's pages (docs/RESULTS.md quotes the lines):
# peak bf16 FLOP/s, HBM capacity and bandwidth, TensorCores and MXUs; collective bandwidth =
# the page's "all-reduce bandwidth per Pod" / chips per Pod (v4, v5e, v6e) or its
# inter-chip interconnect bandwidth (v5p, 4800 Gbps; v5e's 1600 Gbps equals its 200 GB/s).
# MXUs are 128 × 128 before v6e (each one bf16[8,128] @ [128,128] per 8 cycles, "5e13 bf16
# FLOPs/s per MXU at 1.5GHz on TPU v5e", jax-ml.github.io/scaling-book/tpus); v6e's page
# says two 256 × 256 MXUs, which at 918 TFLOP/s would mean a 3.5 GHz clock, while the
# compiler estimates an 8192³ bf16 matmul at 2.98 M cycles, faster than two such MXUs
# could do it (4.19 M): its cost model has 4 · 2 · 256² FLOP per cycle, i.e. 1.75 GHz,
# which we use. Hosts of multi-host slices: v4 and v5p 4 chips with 240 and 208 vCPUs;
# v5e 8 chips with 224 vCPUs (ct5lp-hightpu-8t: a 16x16 slice has 32 hosts); v6e 8 chips
# with 180 vCPUs (ct6e-standard-8t).
CHIPS = {
    "v4": Chip("v4", "v4", True, 3, 275e12, 32 * GIB, 1200e9, 1.1e15 / 4096,
               2 * 4 * 2 * 128**2, 4, 240, ("https://cloud.google.com/tpu/docs/v4",)),
    "v5e": Chip("v5e", "v5e", False, 2, 197e12, 16 * GIB, 819e9, 51.2e12 / 256,
                1 * 4 * 2 * 128**2, 8, 224, ("https://cloud.google.com/tpu/docs/v5e",
                                     "https://jax-ml.github.io/scaling-book/tpus")),
    "v5p": Chip("v5p", "v5", True, 3, 459e12, 95 * GIB, 2765e9, 4800e9 / 8,
                2 * 4 * 2 * 128**2, 4, 208, ("https://cloud.google.com/tpu/docs/v5p",)),
    "v6e": Chip("v6e", "v6e", False, 2, 918e12, 32 * GIB, 1638e9, 102.4e12 / 256,
                1 * 4 * 2 * 256**2, 8, 180, ("https://cloud.google.com/tpu/docs/v6e",)),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  dims: Tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.dims)

  @property
  def name(self) -> str:
    return f"{self.chip.name}:{'x'.join(map(str, self.dims))}"

  def libtpu_kwargs(self) -> dict:
    """Arguments of jax.experimental.topologies.get_topology_desc for this slice: hosts of
    2x2x1 chips; wrap-around links on full-length axes (16 on v5e/v6e; on v4/v5p when
    every side is a multiple of 4: whole cubes), as Cloud TPU slices have them."""
    if self.chip.torus_dims == 2:
      wrap = tuple(d == 16 for d in self.dims) + (False,)
    else:
      wrap = (all(d % 4 == 0 for d in self.dims),) * 3
    return dict(platform="tpu",
                topology_name=f"{self.chip.libtpu_prefix}:{'x'.join(map(str, self.dims))}",
                chip_config_name="megacore" if self.chip.megacore else "default",
                chips_per_host_bounds=(2, 2, 1), wrap=wrap)


def parse_topology(text: str) -> Topology:
  """'v5e:16x16', 'v4:4x4x4', 'v5p:4x4x4', 'v6e:8x8' (generation:chips along each axis)."""
  gen, _, shape = text.partition(":")
  if gen not in CHIPS or not re.fullmatch(r"\d+(x\d+)*", shape):
    raise ValueError(f"--topology={text!r}: write <generation>:<chips per axis>, e.g. "
                     f"v5e:16x16 (v5e-256), v4:4x4x4 (v4-128, 64 chips), v5p:4x4x4 (v5p-128); "
                     f"generations {sorted(CHIPS)}.")
  dims = tuple(int(d) for d in shape.split("x"))
  chip = CHIPS[gen]
  if len(dims) != chip.torus_dims or min(dims) < 1:
    raise ValueError(f"--topology={text!r}: {gen} slices have {chip.torus_dims} axes, "
                     f"e.g. {gen}:{'x'.join(['4'] * chip.torus_dims)}.")
  return Topology(chip, dims)


# ---------------------------------------------------------------------------------------
# Memory and throughput arithmetic.

@dataclasses.dataclass(frozen=True)
class Memory:
  """Per-chip bytes from `compiled.memory_analysis()`."""
  arguments: int
  outputs: int
  aliased: int  # outputs that reuse (donated) argument buffers
  temporaries: int
  code: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  def fits(self, chip: Chip, headroom: float = HEADROOM) -> bool:
    return self.total <= (1.0 - headroom) * chip.hbm_bytes

  def headroom(self, chip: Chip) -> float:
    """Fraction of the chip's HBM left free (negative: over)."""
    return 1.0 - self.total / chip.hbm_bytes


def memory_from_analysis(stats) -> Memory:
  return Memory(arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                code=stats.generated_code_size_in_bytes)


def mfu(model_flops_per_chip: float, step_seconds: float, chip: Chip) -> float:
  """Model FLOPs utilisation: model FLOPs per chip per second over the chip's bf16 peak."""
  return model_flops_per_chip / step_seconds / chip.peak_bf16_flops


def images_per_second(global_batch: int, step_seconds: float) -> float:
  return global_batch / step_seconds


@dataclasses.dataclass(frozen=True)
class Calibration:
  """A public measured run's MFU ÷ this model's estimate of the same step's MFU
  (mim_jax/tools/calibration.py computes it; docs/RESULTS.md "Calibration")."""
  factor: float
  source: str


# python -m mim_jax.tools.calibration (docs/RESULTS.md "Calibration on MaxText's v5e runs"):
# MaxText's 16B and 32B decoders measured 61.10% and 66.86% MFU on v5e-256; this model
# estimates the same steps at 35.11% and 41.18% (x1.740, x1.624): their mean.
CALIBRATIONS = {"v5e": Calibration((0.6110 / 0.3511 + 0.6686 / 0.4118) / 2,
                                   "MaxText 16B and 32B on v5e-256: measured ÷ estimated "
                                   "MFU 1.74 and 1.62")}


def calibrated_mfu(estimated_mfu: float, chip: Chip) -> Optional[float]:
  """The estimate × the chip's calibration (None where the generation has none). Valid
  for matmul-bound steps; see mim_jax/tools/calibration.py for what it does not cover."""
  calibration = CALIBRATIONS.get(chip.name)
  return None if calibration is None else estimated_mfu * calibration.factor


# ---------------------------------------------------------------------------------------
# Scheduled HLO text -> instructions.

_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$")
_ARRAY = re.compile(r"\b(pred|s4|u4|s8|u8|f8e\w+|bf16|f16|s16|u16|f32|s32|u32|f64|s64|u64|"
                    r"c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "bf16": 16, "f16": 16, "s16": 16,
         "u16": 16, "f32": 32, "s32": 32, "u32": 32, "f64": 64, "s64": 64, "u64": 64,
         "c64": 64, "c128": 128}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
# custom calls that only allocate or reinterpret buffers
FREE_CUSTOM_CALLS = ("AllocateBuffer", "ConcatBitcast", "AssumeGatherIndicesInBound",
                     "GatherScatterIndicesBitpacked")


@dataclasses.dataclass
class Instruction:
  name: str
  op: str
  shape: str
  operands: List[str]
  attributes: str
  args: str = ""  # the text between the parentheses (a constant's value)
  is_root: bool = False

  @property
  def cycles(self) -> Optional[int]:
    match = re.search(r'"estimated_cycles":"(\d+)"', self.attributes)
    return int(match.group(1)) if match else None

  def attribute(self, key: str) -> Optional[str]:
    match = re.search(key + r'="?%?([\w.\-]+)', self.attributes)
    return match.group(1) if match else None

  @property
  def op_name(self) -> str:
    match = re.search(r'op_name="([^"]*)"', self.attributes)
    return match.group(1) if match else ""


def shape_bytes(shape: str) -> int:
  """Bytes of an array or tuple shape, e.g. '(bf16[2,3]{1,0}, f32[])' -> 16."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    total += count * _BITS.get(dtype, 8) // 8
  return total


def _split_operands(rest: str) -> Tuple[str, str]:
  """'a, b), attr=...' -> ('a, b', 'attr=...'): the text up to the matching parenthesis."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


def parse_hlo(text: str) -> Tuple[Dict[str, List[Instruction]], str]:
  """({computation: [instructions in printed order]}, entry computation name)."""
  computations: Dict[str, List[Instruction]] = {}
  current, entry = None, None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(2)
      computations[current] = []
      if head.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    if current is None:
      continue
    match = _INSTRUCTION.match(line)
    if match:
      root, name, shape, op, rest = match.groups()
      operands, attributes = _split_operands(rest)
      computations[current].append(Instruction(
          name, op, shape, re.findall(r"%([\w.\-]+)", operands), attributes, operands,
          bool(root)))
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text.")
  return computations, entry


# ---------------------------------------------------------------------------------------
# The estimate.

@dataclasses.dataclass
class StepEstimate:
  """Estimated seconds of one step on one chip, by operation class and by op_name."""
  seconds: float = 0.0
  by_class: Dict[str, float] = dataclasses.field(default_factory=dict)
  by_op: Dict[str, float] = dataclasses.field(default_factory=dict)
  collective_seconds: float = 0.0  # all collectives, before overlap
  cycles: int = 0  # compiler cycle estimates, loop bodies times their trip counts
  loops: int = 0  # while loops (XLA's cost analysis counts each body once)
  unknown_trip_counts: int = 0

  def add(self, cls: str, op_name: str, seconds: float) -> None:
    self.seconds += seconds
    self.by_class[cls] = self.by_class.get(cls, 0.0) + seconds
    key = re.sub(r"_\d+(?=/|$)", "_*", op_name.split(")/", 1)[-1]) or "(unnamed)"
    self.by_op[key] = self.by_op.get(key, 0.0) + seconds

  def merge(self, other: "StepEstimate", times: float) -> None:
    self.seconds += other.seconds * times
    self.collective_seconds += other.collective_seconds * times
    self.cycles += int(other.cycles * times)
    self.unknown_trip_counts += other.unknown_trip_counts
    self.loops += other.loops
    for mine, theirs in ((self.by_class, other.by_class), (self.by_op, other.by_op)):
      for k, v in theirs.items():
        mine[k] = mine.get(k, 0.0) + v * times

  def top_ops(self, n: int = 8) -> List[Tuple[str, float]]:
    return sorted(self.by_op.items(), key=lambda kv: -kv[1])[:n]


def replica_group_size(attributes: str, num_partitions: int,
                       axis_sizes: Optional[Dict[str, int]] = None) -> int:
  """Devices in each replica group of a collective: explicit lists {{0,1},{2,3}}, iota
  form [groups,size]<=[n], or mesh['axis_0'=4,'axis_1'=2] {'axis_0'} (whose axis sizes
  `axis_sizes` may override: a proxy topology standing in for a larger one)."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
  if mesh:
    sizes = {k: int(v) for k, v in re.findall(r"'(\w+)'=(\d+)", mesh.group(1))}
    sizes.update(axis_sizes or {})
    return math.prod(sizes[a] for a in re.findall(r"'(\w+)'", mesh.group(2)))
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attributes)
  if iota:
    return int(iota.group(2))
  listed = re.search(r"replica_groups=\{\{([^}]*)\}", attributes)
  if listed:
    return len(listed.group(1).split(","))
  return num_partitions


def collective_wire_bytes(op: str, shape_bytes_in: int, shape_bytes_out: int, group: int,
                          as_reduce_scatter: bool = False) -> float:
  """Bytes one chip sends in a ring algorithm over a group of `group` chips."""
  if group <= 1:
    return 0.0
  share = (group - 1) / group
  if op == "all-gather":
    return share * shape_bytes_out
  if op == "reduce-scatter" or (op == "all-reduce" and as_reduce_scatter):
    return share * shape_bytes_in
  if op == "all-reduce":
    return 2 * share * shape_bytes_in
  if op == "all-to-all":
    return share * shape_bytes_in
  return float(shape_bytes_in)  # collective-permute


class _Estimator:
  """Walks the scheduled computations; see the module docstring for the model."""

  def __init__(self, text: str, chip: Chip, axis_sizes: Optional[Dict[str, int]]):
    self.computations, self.entry = parse_hlo(text)
    self.chip = chip
    self.axis_sizes = axis_sizes
    match = re.search(r"num_partitions=(\d+)", text)
    self.num_partitions = int(match.group(1)) if match else 1
    self.by_name = {i.name: i for instrs in self.computations.values() for i in instrs}
    self.memo: Dict[str, StepEstimate] = {}

  def fusion_class(self, instr: Instruction) -> str:
    ops = {i.op for i in self.computations.get(instr.attribute("calls") or "", [])}
    if ops & {"convolution", "dot"}:
      return "matmul"
    if ops & {"reduce", "reduce-window"}:
      return "reduction"
    if ops & {"gather", "scatter", "dynamic-slice", "dynamic-update-slice", "sort"}:
      return "gather/scatter/slice"
    if ops <= {"parameter", "copy", "transpose", "bitcast", "reshape", "tuple",
               "get-tuple-element", "fusion"}:
      return "copy/layout"
    return "elementwise"

  @staticmethod
  def op_class(op: str) -> str:
    if op in ("copy", "transpose"):
      return "copy/layout"
    if op in ("reduce", "reduce-window"):
      return "reduction"
    if op in ("slice", "dynamic-slice", "dynamic-update-slice", "gather", "scatter", "sort"):
      return "gather/scatter/slice"
    if op in ("convolution", "dot"):
      return "matmul"
    return "elementwise"

  def collective(self, instr: Instruction) -> Optional[Tuple[str, float, Optional[str]]]:
    """(role, modelled transfer seconds, key) of a collective, or None for other ops.
    role: 'sync', 'start' or 'done'; key pairs a start with its done (the start's name,
    or the channel of the collective an async-collective fusion carries). A fusion with a
    cycle estimate that carries a collective is compute: the transfer it overlaps is
    counted at the collective's start."""
    op = instr.op
    if op.endswith("-done") and op[:-len("-done")] in COLLECTIVES:
      return "done", 0.0, self._async_source(instr)
    base = op[:-len("-start")] if op.endswith("-start") else op
    if base in COLLECTIVES:
      return ("start" if base != op else "sync"), self._transfer(
          [instr], as_reduce_scatter=False), instr.name if base != op else None
    if op != "fusion" or instr.cycles is not None:
      return None
    body = self.computations.get(instr.attribute("calls") or "", [])
    inner = [i for i in body if i.op in COLLECTIVES]
    if not inner:
      return None
    channel = inner[0].attribute("channel_id")
    if instr.name.startswith("async-collective-done"):
      return "done", 0.0, channel
    seconds = self._transfer(inner, any(i.op == "dynamic-slice" for i in body))
    if instr.name.startswith("async-collective-start"):
      return "start", seconds, channel
    return "sync", seconds, None

  def _transfer(self, collectives: Sequence[Instruction], as_reduce_scatter: bool) -> float:
    total = 0.0
    for coll in collectives:
      op = coll.op[:-len("-start")] if coll.op.endswith("-start") else coll.op
      group = replica_group_size(coll.attributes, self.num_partitions, self.axis_sizes)
      in_bytes = sum(shape_bytes(self.by_name[o].shape) for o in coll.operands
                     if o in self.by_name)
      out_bytes = shape_bytes(coll.shape)
      if coll.op.endswith("-start"):  # (operands, outputs, ...) tuple: take the result part
        out_bytes = max(out_bytes - in_bytes, in_bytes)
      wire = collective_wire_bytes(op, in_bytes, out_bytes, group, as_reduce_scatter)
      total += wire / self.chip.collective_bytes_per_s
    return total

  def trip_count(self, instr: Instruction) -> Optional[int]:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attributes)
    if known:
      return int(known.group(1))
    cond = self.computations.get(instr.attribute("condition") or "", [])
    root = next((i for i in cond if i.is_root), None)
    direction = re.search(r"direction=(\w+)", root.attributes) if root else None
    if root is None or root.op != "compare" or not direction:
      return None
    by_name = {i.name: i for i in cond}
    counter, bound = (by_name.get(o) for o in root.operands)
    if counter is None or bound is None or counter.op != "get-tuple-element" or (
        bound.op != "constant"):
      return None
    index = int(re.search(r"index=(\d+)", counter.attributes).group(1))
    limit = _constant_value(bound)
    start = self.init_value(instr, index)
    if limit is None or start is None:
      return None
    trips = {"LT": limit - start, "LE": limit - start + 1, "GT": start - limit,
             "GE": start - limit + 1, "NE": abs(limit - start)}.get(direction.group(1))
    return max(trips, 0) if trips is not None else None

  def init_value(self, loop: Instruction, index: int) -> Optional[int]:
    init = self.by_name.get(loop.operands[0]) if loop.operands else None
    if init is None or init.op != "tuple" or index >= len(init.operands):
      return None
    value = self.by_name.get(init.operands[index])
    while value is not None and value.op == "copy":
      value = self.by_name.get(value.operands[0])
    return _constant_value(value) if value is not None and value.op == "constant" else None

  def computation(self, name: str) -> StepEstimate:
    if name in self.memo:
      return self.memo[name]
    est = StepEstimate()
    now, link_free = 0.0, 0.0  # compute clock; when the interconnect is next free
    pending: Dict[Optional[str], Tuple[float, str]] = {}  # async key -> (end, label)
    for instr in self.computations.get(name, []):
      nested = self.nested(instr)
      if nested is not None:
        est.merge(*nested)
        now += nested[0].seconds * nested[1]
        continue
      coll = self.collective(instr)
      if coll is not None:
        role, seconds, key = coll
        if role == "done":
          end, label = pending.pop(key, (now, ""))
          if end > now:
            est.add("collective (exposed)", label, end - now)
            now = end
          continue
        begin = max(now, link_free)
        link_free = begin + seconds
        est.collective_seconds += seconds
        label = instr.op_name or instr.op.replace("-start", "")
        if role == "start":
          pending[key] = (link_free, label)
        else:
          est.add("collective (exposed)", label, link_free - now)
          now = link_free
        continue
      if instr.op.endswith("-start") or instr.op.endswith("-done"):
        continue  # DMA between HBM and on-chip memory (copy, slice): hidden behind compute
      seconds = self.compute_seconds(instr, est)
      now += seconds
    for end, label in pending.values():  # started here, never waited for here
      if end > now:
        est.add("collective (exposed)", label, end - now)
        now = end
    self.memo[name] = est
    return est

  def nested(self, instr: Instruction) -> Optional[Tuple[StepEstimate, float]]:
    """(estimate, times) of a while loop's body and condition, a call, or a conditional's
    costliest branch; None for other ops."""
    if instr.op == "while":
      trips = self.trip_count(instr)
      loop = StepEstimate(loops=1)
      if trips is None:
        loop.unknown_trip_counts += 1
        trips = 1
      loop.merge(self.computation(instr.attribute("body")), trips)
      loop.merge(self.computation(instr.attribute("condition")), trips + 1)
      return loop, 1.0
    if instr.op == "call":
      return self.computation(instr.attribute("to_apply")), 1.0
    if instr.op == "conditional":
      branches = re.search(r"branch_computations=\{([^}]*)\}", instr.attributes)
      names = (re.findall(r"%([\w.\-]+)", branches.group(1)) if branches else
               [instr.attribute("true_computation"), instr.attribute("false_computation")])
      return max((self.computation(n) for n in names if n), key=lambda e: e.seconds), 1.0
    return None

  def compute_seconds(self, instr: Instruction, est: StepEstimate) -> float:
    """Adds a compute op to `est`: its cycle estimate over the clock, or, for a costly op
    without one, its operand and result bytes over the HBM bandwidth."""
    cycles = instr.cycles
    if cycles is not None:
      seconds = cycles / self.chip.clock_hz
      est.cycles += cycles
      cls = self.fusion_class(instr) if instr.op == "fusion" else self.op_class(instr.op)
      est.add(cls, instr.op_name, seconds)
      return seconds
    if instr.op not in ("fusion", "gather", "scatter", "sort", "custom-call") or (
        instr.attribute("custom_call_target") in FREE_CUSTOM_CALLS):
      return 0.0
    moved = shape_bytes(instr.shape) + sum(
        shape_bytes(self.by_name[o].shape) for o in instr.operands if o in self.by_name)
    seconds = moved / self.chip.hbm_bytes_per_s
    est.add("no compiler estimate (bytes/HBM)", instr.op_name, seconds)
    return seconds

  def _async_source(self, done: Instruction) -> Optional[str]:
    """The start instruction an async done waits for (through get-tuple-elements)."""
    for operand in done.operands:
      instr = self.by_name.get(operand)
      while instr is not None and instr.op == "get-tuple-element":
        instr = self.by_name.get(instr.operands[0])
      if instr is not None and instr.op.endswith("-start"):
        return instr.name
    return None


def _constant_value(instr: Instruction) -> Optional[int]:
  value = re.fullmatch(r"\s*(-?\d+)\s*", instr.args)
  return int(value.group(1)) if value else None


def estimate_step_time(hlo_text: str, chip: Chip,
                       axis_sizes: Optional[Dict[str, int]] = None) -> StepEstimate:
  """Estimated seconds of the compiled program on one chip (see the module docstring)."""
  estimator = _Estimator(hlo_text, chip, axis_sizes)
  return estimator.computation(estimator.entry)
