"""Where a train step's time goes on this host, by operation class: ours, and the official
MAE step beside it.

python -m mim_jax.tools.profile_step [--methods=mae] [--batch_size=8] [--steps=10] \
    [--config=configs/<method>.py:<variant>] [--dtype=...] [--remat=...] [--scan_layers] \
    [--attention_impl=...] [--mae_repo=PATH [--timm_path=DIR]] [--results=docs/RESULTS.md]

Profiles the step of `--config`, else of the first of `--methods`'s ViT-B recipe
(configs/<method>.py:vit_base) at `--batch_size`, with the speed options of
mim_jax/tools/step_flags.py. Ours: `--steps` steps under jax.profiler (host tracer only, no
Python tracer: it adds no measurable time), whose trace names each executed HLO
instruction. Each instant of the steps is shared equally among the instructions running
then (XLA's CPU runtime runs independent ones concurrently), so that the classes add up to
the time instructions ran; the rest of the step is the runtime's own (dispatch, waits). An
instruction's class comes from its ops and the model code that emitted it (HLO metadata
op_name): CLASSES. The official step (mim_jax/tools/torch_mae_step.py): torch.profiler
over the same number of steps, each op's self time by its aten name, in the same classes.
With --results, the table replaces that document's 'cpu_profile' section (or
--results_section's).
"""
import collections
import glob
import gzip
import json
import re
import tempfile
from typing import Dict, Iterable, List, Tuple

import jax
import numpy as np
from absl import app, flags

from mim_jax import host
from mim_jax.tools import results_doc, step_flags, torch_mae_step
from mim_jax.tools.compiled_step import CompiledStep
from mim_jax.tools.step_flags import apply_overrides, describe, method_config

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  step_flags.define_config_flags("One experiment config file (overrides --methods).")
  flags.DEFINE_list("methods", ["mae"], "The first method's configs/<method>.py:vit_base is "
                    "profiled.")
  flags.DEFINE_integer("batch_size", 8, "Global batch of the --methods config.")
  flags.DEFINE_integer("steps", 10, "Profiled steps.")
  torch_mae_step.define_flags()
  results_doc.define_flags("cpu_profile")


CLASSES = ("matmul", "attention softmax", "GELU", "LayerNorm", "masking gather/scatter",
           "optimizer update", "copies/transposes", "other")
# Ops that only move data.
MOVES = {"copy", "transpose", "bitcast", "broadcast", "reshape", "slice", "pad",
         "concatenate", "parameter", "constant", "tuple", "get-tuple-element",
         "dynamic-slice", "dynamic-update-slice"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$")


def hlo_instructions(hlo_text: str) -> Tuple[Dict[str, Tuple[str, str, str]],
                                            Dict[str, Dict[str, Tuple[str, str, str]]]]:
  """{instruction: (shape, opcode, line)} over all computations, and the same for each
  computation: {computation: {instruction: (shape, opcode, line)}}."""
  instructions, computations, body = {}, {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if header:
      body = computations.setdefault(header.group(1), {})
    elif line.startswith("}"):
      body = None
    elif body is not None:
      m = _INSTRUCTION.match(line)
      if m:
        body[m.group(1)] = instructions[m.group(1)] = (m.group(2), m.group(3), line)
  return instructions, computations


def _dims(shape: str) -> List[int]:
  m = re.match(r"\w+\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def dot_flops(line: str, instructions) -> float:
  """2 · output elements · contracted size of a `dot` instruction line."""
  out = _dims(line.split(" = ", 1)[1].split(" ", 1)[0])
  lhs = re.search(r"dot\(%?([\w.\-]+)", line).group(1)
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1)
  lhs_dims = _dims(instructions[lhs][0])
  k = np.prod([lhs_dims[int(c)] for c in contracting.split(",") if c])
  return 2.0 * float(np.prod(out)) * float(k)


def instruction_ops(name: str, instructions, computations) -> Tuple[set, float, str]:
  """(opcodes, matmul FLOPs, metadata op_name) of an executed instruction (a fusion: of the
  computation it calls)."""
  _, opcode, line = instructions[name]
  meta = re.search(r'op_name="([^"]*)"', line)
  meta = meta.group(1) if meta else ""
  if opcode != "fusion":
    flops = dot_flops(line, instructions) if opcode == "dot" else 0.0
    return {opcode}, flops, meta
  inner = computations[re.search(r"calls=%?([\w.\-]+)", line).group(1)]
  flops = sum(dot_flops(l, instructions) for _, op, l in inner.values() if op == "dot")
  return {op for _, op, _ in inner.values()}, flops, meta


def op_class(ops: set, flops: float, meta: str) -> str:
  """One of CLASSES for an HLO instruction (its opcodes, FLOPs and model op_name)."""
  if "cond/" in meta or "branch_" in meta:  # the train step's update branch
    return "optimizer update"
  if ops & {"gather", "scatter", "sort"}:
    return "masking gather/scatter"
  if flops and "/attn/" in meta and ops & {"exponential", "reduce"}:
    return "attention softmax"  # the small q·k / p·v dots fused with the softmax
  if flops:
    return "matmul"
  if ops <= MOVES:
    return "copies/transposes"
  if "/attn/" in meta:
    return "attention softmax"
  if "/mlp/" in meta:
    return "GELU"
  if re.search(r"/(\w*_)?norm\d?/", meta):
    return "LayerNorm"
  return "other"


def exclusive_times(events: Iterable[Tuple[str, float, float]]) -> Dict[str, float]:
  """{name: time} from (name, start, duration) events that may overlap: each instant is
  shared equally among the events running then."""
  points = []
  for name, start, duration in events:
    points += [(start, 1, name), (start + duration, -1, name)]
  points.sort(key=lambda p: (p[0], p[1]))
  active, shares, last = collections.Counter(), collections.Counter(), None
  for t, delta, name in points:
    running = sum(active.values())
    if running and last is not None:
      for other, count in active.items():
        if count:
          shares[other] += (t - last) * count / running
    active[name] += delta
    last = t
  return dict(shares)


def profile_ours(step: CompiledStep, steps: int) -> Dict[str, Dict[str, float]]:
  """{class: {'ms': per step, 'gflop': matmul GFLOP per step}} of `steps` profiled steps,
  plus 'runtime' (step time no instruction ran)."""
  step.run(1, record=False)
  with tempfile.TemporaryDirectory() as trace_dir:
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    options.host_tracer_level = 2
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True, profiler_options=options)
    times = step.run(steps)
    jax.profiler.stop_trace()
    with gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]) as f:
      trace = json.load(f)
  instructions, computations = hlo_instructions(step.compiled.as_text())
  events = [(e["name"], e["ts"], e["dur"]) for e in trace["traceEvents"]
            if e.get("ph") == "X" and e.get("name") in instructions]
  table = {c: {"ms": 0.0, "gflop": 0.0} for c in CLASSES}
  for name, us in exclusive_times(events).items():
    ops, flops, meta = instruction_ops(name, instructions, computations)
    row = table[op_class(ops, flops, meta)]
    row["ms"] += us / 1e3 / steps
    row["gflop"] += flops / 1e9
  step_ms = float(np.median(times)) * 1e3
  print(f"ours: profiled steps {step_ms:.0f} ms, unprofiled "
        f"{np.median(step.run(steps)) * 1e3:.0f} ms", flush=True)
  table["runtime"] = {"ms": step_ms - sum(r["ms"] for r in table.values()), "gflop": 0.0}
  return table


# aten ops by class, for the official step (self CPU time; timm 0.4.12 Block, Attention).
ATEN_CLASSES = {
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm"),
    "attention softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
    "GELU": ("aten::gelu", "aten::gelu_backward"),
    "LayerNorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "masking gather/scatter": ("aten::gather", "aten::scatter", "aten::scatter_add",
                               "aten::sort", "aten::argsort", "aten::index",
                               "aten::gather_backward", "aten::scatter_add_"),
    "copies/transposes": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat",
                          "aten::_to_copy"),
}


def profile_official(official, steps: int) -> Dict[str, Dict[str, float]]:
  """The same table for the official step: aten self times by ATEN_CLASSES; everything
  under `Optimizer.step` is the optimizer update."""
  import torch  # pylint: disable=import-outside-toplevel
  official()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    times = torch_mae_step.time_steps(official, steps)
  by_name = {name: c for c, names in ATEN_CLASSES.items() for name in names}
  table = {c: {"ms": 0.0, "gflop": 0.0} for c in CLASSES}
  for event in prof.events():
    parent, in_optimizer = event, False
    while parent is not None:
      in_optimizer |= parent.name.startswith("Optimizer.step")
      parent = parent.cpu_parent
    c = "optimizer update" if in_optimizer else by_name.get(event.name, "other")
    table[c]["ms"] += event.self_cpu_time_total / 1e3 / steps
  table["runtime"] = {"ms": float(np.median(times)) * 1e3 -
                             sum(r["ms"] for r in table.values()), "gflop": 0.0}
  return table


LEGEND = ("Ours: 'attention softmax' includes the q·kᵀ and p·v batched matmuls that XLA "
          "fuses with the softmax (their FLOPs give its TFLOP/s); the official step's are in "
          "its 'matmul' row (aten::bmm). 'runtime': step time during which no instruction "
          "ran (XLA's CPU runtime dispatching and handing work between threads; the "
          "official step's: Python and autograd outside any op).")


def markdown_table(tables: Dict[str, Dict[str, Dict[str, float]]]) -> str:
  """Classes as rows, each profiled step's ms per step and share as columns."""
  names = list(tables)
  lines = ["| class | " + " | ".join(f"{n} ms/step | share" for n in names) + " |",
           "| --- |" + " --- | --- |" * len(names)]
  totals = {n: sum(r["ms"] for r in tables[n].values()) for n in names}
  for c in CLASSES + ("runtime",):
    cells = []
    for n in names:
      row = tables[n][c]
      rate = f" ({row['gflop'] / row['ms']:.3f} TFLOP/s)" if row["gflop"] and row["ms"] else ""
      cells.append(f"{row['ms']:.0f}{rate} | {row['ms'] / totals[n]:.0%}")
    lines.append(f"| {c} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  results_doc.requested_section()  # a bad --results_section fails first
  # CPU only: with libtpu installed (the [tpu] extra) and no TPU, its profiler would add
  # half a step to every profiled one.
  jax.config.update("jax_platforms", "cpu")
  host.configure_from_flags()
  if FLAGS.config is not None:
    config = FLAGS.config
    apply_overrides(config)
  else:
    config = method_config(FLAGS.methods[0], FLAGS.batch_size)
  print(describe(config), flush=True)
  step = CompiledStep(config, count_model_flops=False)
  tables = {"ours": profile_ours(step, FLAGS.steps)}
  if FLAGS.mae_repo:
    models_mae = torch_mae_step.import_official_mae(FLAGS.mae_repo, FLAGS.timm_path)
    tables["official"] = profile_official(
        torch_mae_step.official_step(models_mae, config.batch_size), FLAGS.steps)
  table = markdown_table(tables)
  print(table, flush=True)
  results_doc.write_from_flags("mim_jax.tools.profile_step",
                               "Where the CPU train step's time goes",
                               f"{describe(config)}, {FLAGS.steps} profiled steps.\n\n"
                               f"{table}\n{LEGEND}\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
