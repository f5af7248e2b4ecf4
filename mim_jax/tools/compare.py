"""Compare pretraining recipes: pretrain each config variant for the same budget, probe its
encoder at checkpoints along the way, and tabulate and plot probe top-1 against
pretraining FLOPs and wall time, with the random-init and raw-pixel baselines.

python -m mim_jax.tools.compare --workdir=/tmp/compare --budget=epochs:8 \
    [--configs=configs/mae.py:cifar,configs/pcae.py:cifar,...] \
    [--data=source=npz --data=path=../shared/data/cifar10_small.npz] \
    [--num_checkpoints=4] [--protocols=knn,linear_probe,attentive_probe,finetune] \
    [--pools=cls,mean] [--streamed_at=ends] \
    [--eval_override=attentive_probe.epochs=10 --eval_override=knn:pool=mean] \
    [--results=docs/RESULTS.md [--results_section=compare]]

Inputs:
  --configs: config specs `path[:variant]` (default: the `:cifar` variant of every method
    of mim_jax.methods.METHODS). Each variant keeps its own recipe and image size.
  --data: `field=value` overrides of `config.data` for every variant (any source: npz,
    image_folder, tfds, synthetic; not image_size, which stays each config's), each value
    parsed as ml_collections parses `--config.data.field=value`. The number of examples
    comes from the data, the number of classes from its labels.
  --budget: per variant, `steps:N`, `epochs:E` (E × steps per epoch, steps per epoch =
    train examples // the config's batch size, rounded), `flops:F` (floor of F / FLOPs per
    step) or `cpu_seconds:S` (floor of S / CPU-seconds per step).
  --protocols: `knn`, `linear_probe`, `attentive_probe`, `finetune` (configs/eval/<name>.py)
    or eval config specs (default: knn and the `:cifar` variants of the two probes and of
    fine-tuning, sized for 10k-image sets on a CPU); --eval_override `[PROTOCOL:]field=value`
    changes their fields (e.g. fewer attentive-probe epochs on a CPU; values parsed as
    --data's), for every protocol with that field or only the one named. --pools=cls,mean
    runs each precomputed protocol that reads a pooled feature (k-NN, linear probe) once
    per pool, a column `<label>_<pool>` each, from the same checkpoints (no second
    pretraining); without it each runs on its config's pool (None: the method's declared
    one). A streamed protocol (fine-tuning, which trains the encoder) runs on the random
    init and the last checkpoint (--streamed_at=ends) or on every one (all). A streamed
    protocol too large
    for the data (the published linear probe's batch of 16384 on 10k images:
    `linear_probe.size_warnings`) is replaced by its small-data variant (SMALL_DATA),
    logged and noted in the table.

What it does, per variant (everything under --workdir/<variant>/):
  1. budget_steps.json: the budget in steps. FLOPs per step = XLA's cost analysis of the
     compiled train step (training/train_step.py's, of the config, on a random batch of
     its shape: tools/compiled_step.CompiledStep) × the device count (the count is per
     device). For `cpu_seconds`, the process CPU time (time.process_time, all threads)
     of --measure_steps steps of that compiled step after its warm-up step, divided by
     the steps: the train step alone, without compilation and input pipeline. The file
     is kept: a rerun reuses it (or the plan.json of a workdir written before it was
     renamed), and refuses another config (file or --data), --budget or --num_checkpoints;
     a run that an older mim_jax recorded continues when its config lacks only fields this
     version added at their defaults (`only_new_default_fields`).
  2. Pretraining with mim_jax.pretrain.run in pretrain/ for N steps: the recipe's warmup
     and lr milestones scaled by N / its own length (the schedule keeps its shape), a
     checkpoint every ceil(N / --num_checkpoints) steps and at N, none deleted, and the
     initial state as checkpoint 0 (train_and_evaluate with stop_after_step=0). A rerun
     resumes an unfinished run and skips a finished one.
  3. Every protocol on every checkpoint (streamed ones: --streamed_at) with
     mim_jax.evaluation.run.evaluate, in eval/<protocol>-<hash of its config>/step_<S>/
     (the precomputed ones of a checkpoint encode its images once: run.TokenCache);
     one whose metrics.json exists is read back, not rerun. Step 0 is the encoder randomly
     initialised (fine-tuned, it is training from scratch); variants whose step 0 is the
     same encoder, evaluated the same way (`random_init_key`), share one evaluation of it
     under --workdir/random_init/<protocol>-<hash>/<key>/.
  4. The variant's row of the tables (every checkpoint's top-1, FLOPs, wall time) in
     evaluations.json, with the protocols' keys and --streamed_at it was made for: a rerun
     with the same ones reads it back and needs neither the checkpoints nor eval/. What a
     finished study needs to be tabulated again (e.g. kept after its checkpoints are
     deleted, or carried to another machine): per variant budget_steps.json and
     evaluations.json, and raw_pixels/.
  Raw pixels: the protocols (run.run_protocol) on features.pixel_features of the
  evaluation data of each variant (flattened normalised images; the encoder's patch
  grid as tokens for the attentive probe, heads = gcd(encoder heads, token width)),
  once per distinct (data, image size, patch size), under --workdir/raw_pixels/.

x-axes: pretraining FLOPs = step × FLOPs per step; training wall time = Σ step_time ×
steps of its logging interval, from the trainer's TensorBoard scalars (step_time: wall
seconds per step between two log points, measured in the train loop: input pipeline,
step, metric and image summaries, k-NN monitor, the start of asynchronous checkpoint
saves; not the first step of each process, which compiles, nor start-up, restore and
evaluation), interpolated linearly at checkpoints between log points.

Outputs in --workdir: comparison.json, comparison.md (final and along-the-way tables;
each column's gain over the variant's random init, first checkpoint → last; the
directions the methods' papers report against another method, `Method.claims`,
checked on the study where it has both),
top1_vs_flops.png and top1_vs_wall_time.png (one panel per protocol, one line per
variant; dotted horizontal lines: each variant's random init; dashed: raw pixels).
With --results, the section --results_section (default 'compare') of that document is
replaced by the tables, the command, the machine and the date, with the plots copied to
figures/<section>_top1_vs_*.png beside it (mim_jax/tools/results_doc.py).
"""
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import time
from typing import Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mim_jax import (checkpoint, config_files, data, defaults, events, methods, optim,
                     pretrain)
from mim_jax.evaluation import downstream, features, pretrained, run
from mim_jax.evaluation import protocols as registry
from mim_jax.tools import compiled_step, results_doc
from mim_jax.training import config as train_config
from mim_jax.training import record

DEFAULT_CONFIGS = [f"configs/{name}.py:cifar" for name in methods.METHODS]
COMPARED = registry.names()
DEFAULT_PROTOCOLS = ["knn", "configs/eval/linear_probe.py:cifar",
                     "configs/eval/attentive_probe.py:cifar", "configs/eval/finetune.py:cifar"]
# A streamed protocol's variant for data too small for its published recipe (fit_to_data).
SMALL_DATA = {"linear_probe": "configs/eval/linear_probe.py:cifar"}
STREAMED_AT = ("ends", "all")  # --streamed_at: the checkpoints a streamed protocol runs on
BUDGET_KINDS = ("steps", "epochs", "flops", "cpu_seconds")
BUDGET_FILE = "budget_steps.json"
LEGACY_BUDGET_FILE = "plan.json"  # its name before 2026-12-06: read, never written
ROW_FILE = "evaluations.json"  # a variant's evaluated row: compare.recorded_row
FIGURES = {"flops": ("top1_vs_flops.png", "pretraining FLOPs"),
           "wall_seconds": ("top1_vs_wall_time.png", "training wall time (s)")}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  flags.DEFINE_list("configs", DEFAULT_CONFIGS, "Config specs path[:variant] to compare.")
  flags.DEFINE_string("workdir", None, "Pretraining, evaluation and output directory.")
  flags.DEFINE_string("budget", None, "Per variant: steps:N, epochs:E, flops:F or "
                      "cpu_seconds:S.")
  flags.DEFINE_multi_string("data", [], "field=value override of config.data for every "
                            "variant (repeat the flag), e.g. --data=source=npz "
                            "--data=path=DATA.npz.")
  flags.DEFINE_integer("num_checkpoints", 4, "Checkpoints evaluated along the way, besides "
                       "step 0 (random init).")
  flags.DEFINE_list("protocols", DEFAULT_PROTOCOLS, "knn, linear_probe, attentive_probe, "
                    "finetune (configs/eval/<name>.py) or eval config specs path[:variant].")
  flags.DEFINE_list("pools", [], "Pooled features (cls, mean) each precomputed protocol "
                    "that reads one is run on, a column each (default: its config's pool).")
  flags.DEFINE_enum("streamed_at", "ends", STREAMED_AT, "Checkpoints a streamed protocol "
                    "(fine-tuning, the streamed linear probe) runs on: ends (the random init "
                    "and the last) or all.")
  flags.DEFINE_multi_string("eval_override", [], "[PROTOCOL:]field=value on the protocols' "
                            "eval configs (repeat the flag).")
  flags.DEFINE_integer("measure_steps", 5, "Steps timed for the cpu_seconds budget.")
  results_doc.define_flags("compare")


# ----------------------------------------------------------------------------- inputs


def has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for name in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return False
    node = node[name]
  return True


def set_field(config: ml_collections.ConfigDict, assignment: str, flag: str) -> bool:
  """Apply 'dotted.field=value' to `config` as ml_collections applies the command line's
  `--config.dotted.field=value` (the value parsed for the field's type); False when it has
  no such field."""
  dotted, sep, text = assignment.partition("=")
  if not sep or not dotted:
    raise app.UsageError(f"{flag}={assignment!r}: write field=value.")
  if not has_field(config, dotted):
    return False
  argv = ["", f"--config.{dotted}={text}"]
  parser = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=parser, lock_config=False,
                                    sys_argv=argv)
    parser(argv)
  except (flags.Error, TypeError, ValueError) as e:
    raise app.UsageError(f"{flag}={assignment!r}: {e}") from None
  return True


@dataclasses.dataclass(frozen=True)
class Budget:
  """--budget, parsed: `kind` of BUDGET_KINDS, `amount` > 0, and the text as given."""
  kind: str
  amount: float
  text: str

  @classmethod
  def parse(cls, text: Optional[str]) -> "Budget":
    kind, _, amount = (text or "").partition(":")
    try:
      value = float(amount)
    except ValueError:
      value = float("nan")
    if kind not in BUDGET_KINDS or not value > 0 or (kind == "steps" and value != int(value)):
      raise app.UsageError(f"--budget={text!r}: give steps:N, epochs:E, flops:F or "
                           "cpu_seconds:S with a positive amount (N an integer).")
    return cls(kind, value, text)

  def steps(self, *, steps_per_epoch: int, flops_per_step: Optional[float] = None,
            cpu_seconds_per_step: Optional[float] = None) -> int:
    """Training steps that the budget buys (see the module docstring)."""
    if self.kind == "steps":
      return int(self.amount)
    if self.kind == "epochs":
      return int(round(self.amount * steps_per_epoch))
    per_step = flops_per_step if self.kind == "flops" else cpu_seconds_per_step
    return int(math.floor(self.amount / per_step))


def checkpoint_steps(steps: int, num_checkpoints: int) -> List[int]:
  """0, then every ceil(steps / num_checkpoints) steps, and `steps`."""
  every = math.ceil(steps / num_checkpoints)
  return [0] + sorted(set(range(every, steps, every)) | {steps})


def spec_name(spec: str) -> str:
  """'configs/mae.py:cifar' -> 'mae_cifar' (a directory and table name)."""
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0] + (f"_{arg}" if arg else "")
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def config_hash(config: ml_collections.ConfigDict) -> str:
  return config_files.fingerprint(config, 8)


@dataclasses.dataclass
class Variant:
  """A pretraining config to compare: its spec, name and config (data overrides applied)."""
  spec: str
  name: str
  config: ml_collections.ConfigDict
  workdir: str

  @property
  def pretrain_dir(self) -> str:
    return os.path.join(self.workdir, "pretrain")

  @property
  def budget_path(self) -> str:
    return os.path.join(self.workdir, BUDGET_FILE)


@dataclasses.dataclass
class Protocol:
  """An evaluation config (configs/eval/) with the overrides applied; `picked` says why
  it replaced the one asked for (`fit_to_data`)."""
  label: str
  spec: str
  config: ml_collections.ConfigDict
  overrides: List[str] = dataclasses.field(default_factory=list)
  picked: str = ""

  @property
  def key(self) -> str:
    return f"{self.label}-{config_hash(self.config)}"

  @property
  def top1(self) -> str:
    return registry.get(self.config.protocol).top1


def load_variants(specs: Sequence[str], data_overrides: Sequence[str],
                  workdir: str) -> List[Variant]:
  if not specs:
    raise app.UsageError("--configs is empty: name at least one config spec.")
  variants = []
  for spec in specs:
    config = config_files.load(spec)
    for assignment in data_overrides:
      if assignment.partition("=")[0] == "image_size":
        raise app.UsageError("--data cannot set image_size: each variant keeps its own.")
      if not set_field(config.data, assignment, "--data"):
        raise app.UsageError(f"--data={assignment!r}: config.data has no such field "
                             f"({', '.join(sorted(config.data))}).")
    name = spec_name(spec)
    variants.append(Variant(spec, name, config.copy_and_resolve_references(),
                            os.path.join(workdir, name)))
  names = [v.name for v in variants]
  if len(set(names)) < len(names):
    raise app.UsageError(f"--configs gives variants with the same name ({names}): each "
                         "needs its own file name or variant.")
  return variants


def fit_to_data(protocol: Protocol, variants: Sequence[Variant]) -> Protocol:
  """`protocol`, or its small-data variant (SMALL_DATA) when its streamed run would be too
  small for a variant's data to say anything (`downstream.planned_size_warnings`), with
  the reason logged and kept in `picked`."""
  config = protocol.config
  if config.features != "streamed":
    return protocol
  warnings = [w for v in variants for w in downstream.planned_size_warnings(
      downstream.resolve_config(config, v.config), registry.get(config.protocol).streamed)]
  if not warnings or config.protocol not in SMALL_DATA:
    return protocol
  spec = SMALL_DATA[config.protocol]
  small = Protocol(spec_name(spec), spec, config_files.load(spec))
  small.overrides = [o for o in protocol.overrides
                     if set_field(small.config, o, "--eval_override")]
  dropped = [o for o in protocol.overrides if o not in small.overrides]
  small.picked = f"picked instead of {protocol.spec} for this data: {warnings[0]}"
  if dropped:
    small.picked += f" (overrides it has no field for: {', '.join(dropped)})"
  logging.warning("--protocols: %s %s", spec, small.picked)
  return small


def load_protocols(names: Sequence[str], overrides: Sequence[str],
                   variants: Sequence[Variant], pools: Sequence[str] = ()) -> List[Protocol]:
  """The eval configs `names` (fitted to the `variants`' data, `fit_to_data`) with the
  `overrides` applied, once per pool of `pools` they read (`expand_pools`), or a
  UsageError."""
  protocols = []
  for name in names:
    spec = f"configs/eval/{name}.py" if name in COMPARED else name
    config = config_files.load(spec)
    if config.get("protocol") not in COMPARED:
      raise app.UsageError(f"--protocols: {spec} is not a {'/'.join(COMPARED)} config.")
    protocols.append(Protocol(spec_name(spec), spec, config))
  if len({p.label for p in protocols}) < len(protocols):
    raise app.UsageError(f"--protocols names one config twice: {list(names)}.")
  for override in overrides:
    target, sep, assignment = override.partition(":")
    if not sep or "=" in target:
      target, assignment = None, override
    chosen = [p for p in protocols if target in (None, p.label, p.config.protocol)]
    if not chosen:
      raise app.UsageError(f"--eval_override={override!r}: no protocol {target!r} in "
                           f"--protocols.")
    applied = [p for p in chosen if set_field(p.config, assignment, "--eval_override")]
    for p in applied:
      p.overrides.append(assignment)
    if not applied:
      raise app.UsageError(f"--eval_override={override!r}: no such field in the eval "
                           f"config of {[p.label for p in chosen]}.")
  for p in protocols:  # what run.resolve_evaluation checks without a pretrained encoder
    if p.config.pool is not None:
      features.check_pool(p.config.pool, registry.get(p.config.protocol).pools,
                          f"{p.label} pool")
    data.check_batch_size(p.config.eval_batch_size, jax.device_count(), jax.process_count(),
                          field=f"{p.label} eval_batch_size")
  return expand_pools([fit_to_data(p, variants) for p in protocols], pools)


def expand_pools(protocols: Sequence[Protocol], pools: Sequence[str]) -> List[Protocol]:
  """Each precomputed protocol that reads a pooled feature, once per pool of `pools` (label
  `<label>_<pool>`, 'pool=<pool>' added to its overrides); the others as they are."""
  known = sorted({pool for name in COMPARED for pool in registry.get(name).pools} - {"tokens"})
  for pool in pools:
    if pool not in known:
      raise app.UsageError(f"--pools={','.join(pools)}: {pool!r} is not one of {known}.")
  expanded = []
  for p in protocols:
    taken = [pool for pool in pools if p.config.features == "precomputed"
             and pool in registry.get(p.config.protocol).pools]
    if not taken:
      expanded.append(p)
    for pool in taken:
      config = p.config.copy_and_resolve_references()
      config.pool = pool
      expanded.append(dataclasses.replace(p, label=f"{p.label}_{pool}", config=config,
                                          overrides=p.overrides + [f"pool={pool}"]))
  return expanded


# --------------------------------------------------------------------- pretraining


def steps_per_epoch(config) -> int:
  return train_config.schedule(config).steps_per_epoch


def read_budget_steps(variant: Variant, budget: Budget,
                      num_checkpoints: int) -> Optional[dict]:
  """The variant's budget_steps.json (or plan.json), or None; an error if it was made for
  other flags."""
  paths = [variant.budget_path, os.path.join(variant.workdir, LEGACY_BUDGET_FILE)]
  path = next((p for p in paths if os.path.exists(p)), None)
  if path is None:
    return None
  with open(path) as f:
    budget_steps = json.load(f)
  asked = budget_key(variant, budget, num_checkpoints)
  found = {k: budget_steps.get(k) for k in asked}
  if found != asked and not only_new_default_fields(variant, budget_steps, found, asked):
    raise app.UsageError(f"{path} holds the budget for {found}, not {asked} (config_hash: "
                         "of the config with --data applied): use another --workdir, or the "
                         "same config, --data, --budget and --num_checkpoints.")
  return budget_steps


def only_new_default_fields(variant: Variant, budget_steps: dict, found: dict,
                            asked: dict) -> bool:
  """Whether the budget was made for this same run by an older mim_jax: only the config
  hash differs, and the config the pretraining run recorded lacks just fields that this
  version added at their defaults (e.g. optimizer.mu_dtype='float32'), which change
  nothing it computes. Logged when so."""
  if {k: v for k, v in found.items() if k != "config_hash"} != {
      k: v for k, v in asked.items() if k != "config_hash"}:
    return False
  try:
    recorded = checkpoint.read_config(variant.pretrain_dir)
  except FileNotFoundError:
    return False
  current = scheduled_config(variant.config, budget_steps["steps"],
                             budget_steps["num_checkpoints"])
  defaults_now = record.flat_fields(defaults.base_config())
  changes = record.config_changes(recorded, current)
  added = all(old is None and key in defaults_now and new == defaults_now[key]
              for key, (old, new) in changes.items())
  if changes and added:
    logging.info("%s: continuing a run made before fields %s existed (at their defaults).",
                 variant.name, sorted(changes))
  return added


def budget_key(variant: Variant, budget: Budget, num_checkpoints: int) -> dict:
  """What the budget in steps is for: a rerun with other values would not continue the
  same run."""
  return {"spec": variant.spec, "config_hash": config_hash(variant.config),
          "budget": budget.text, "num_checkpoints": num_checkpoints}


def validate(variant: Variant, budget: Budget, num_checkpoints: int) -> None:
  """Errors a user can fix, raised before anything is compiled or written."""
  config = variant.config
  methods.create(config, total_steps=1)
  train_config.validate(config, jax.device_count(), jax.process_count())
  if budget.kind in ("steps", "epochs") and budget.steps(
      steps_per_epoch=steps_per_epoch(config)) < 1:
    raise app.UsageError(f"--budget={budget.text} buys no training step for {variant.spec} "
                         f"({steps_per_epoch(config)} steps per epoch).")
  read_budget_steps(variant, budget, num_checkpoints)


def convert_budget(variant: Variant, budget: Budget, num_checkpoints: int,
                   measure_steps: int) -> dict:
  """The budget in steps, FLOPs per step and (cpu_seconds) CPU-seconds per step."""
  config = variant.config
  per_epoch = steps_per_epoch(config)
  compiled = compiled_step.CompiledStep(config, count_model_flops=False)
  flops_per_step = compiled.step_flops * jax.device_count()
  how = f"{budget.kind}:{budget.amount:g}"
  cpu_per_step = None
  if budget.kind == "cpu_seconds":
    start = time.process_time()
    compiled.run(measure_steps)
    cpu_per_step = (time.process_time() - start) / measure_steps
    how += (f" / {cpu_per_step:.4g} CPU-s per step (time.process_time of the whole process "
            f"over {measure_steps} steps of the compiled train step on a random batch, "
            "after its warm-up step; no compilation, no input pipeline)")
  elif budget.kind == "flops":
    how += f" / {flops_per_step:.4g} FLOPs per step"
  elif budget.kind == "epochs":
    how += f" × {per_epoch} steps per epoch"
  del compiled
  steps = budget.steps(steps_per_epoch=per_epoch, flops_per_step=flops_per_step,
                       cpu_seconds_per_step=cpu_per_step)
  if steps < 1:
    raise app.UsageError(f"--budget={budget.text} buys no training step for {variant.spec} "
                         f"({how}).")
  return {**budget_key(variant, budget, num_checkpoints), "steps": steps,
          "how": f"{how} = {steps} steps", "steps_per_epoch": per_epoch,
          "batch_size": config.batch_size,
          "num_examples": data.num_examples(config, config.data.train_split),
          "flops_per_step": flops_per_step, "cpu_seconds_per_step": cpu_per_step,
          "device_count": jax.device_count(),
          "checkpoint_steps": checkpoint_steps(steps, num_checkpoints)}


def scheduled_config(config: ml_collections.ConfigDict, steps: int,
                     num_checkpoints: int) -> ml_collections.ConfigDict:
  """`config` trained for `steps` steps: warmup and lr milestones scaled by steps / its
  own length, a checkpoint every ceil(steps / num_checkpoints) steps, none deleted."""
  total, warmup, per_epoch = train_config.schedule(config)[:3]
  opt = config.optimizer
  milestones = opt.decay_steps or [optim.steps_from_epochs(-1, e, per_epoch)
                                   for e in opt.decay_epochs]
  scale = steps / total
  config = config.copy_and_resolve_references()
  config.num_train_steps = steps
  config.warmup_steps = int(round(warmup * scale))
  config.optimizer.decay_steps = tuple(int(round(m * scale)) for m in milestones)
  config.optimizer.decay_epochs = ()
  config.checkpoint_every_steps = math.ceil(steps / num_checkpoints)
  config.keep_checkpoints = steps + 1  # at most one per step: none is deleted
  return config


def pretrain_variant(variant: Variant, budget_steps: dict) -> bool:
  """Pretrain (or resume, or find finished) the variant; False if the run was stopped
  (SIGTERM, Ctrl-C) before its last step."""
  steps = budget_steps["steps"]
  done = pretrained.checkpoint_steps(variant.pretrain_dir)
  if steps in done and 0 in done:
    return True
  if done and 0 not in done:
    raise RuntimeError(f"{variant.pretrain_dir} has checkpoints {done} but not step 0 (the "
                       "random init): it was not started by this tool; use another --workdir.")
  config = scheduled_config(variant.config, steps, budget_steps["num_checkpoints"])
  if not done:
    pretrain.run(config, variant.pretrain_dir, stop_after_step=0)
  start = time.process_time()
  state = pretrain.run(config, variant.pretrain_dir)
  logging.info("%s: pretrained to step %d in %.0f CPU-s", variant.name, int(state.step),
               time.process_time() - start)
  return int(state.step) == steps


def wall_seconds(workdir: str, steps: Sequence[int]) -> Dict[int, Optional[float]]:
  """Training wall time to each of `steps` from the logged step_time (module docstring);
  None past the last logged step."""
  logged = dict(events.scalar_series(workdir, "step_time", with_steps=True))
  xs, ys, previous = [0], [0.0], 0
  for step, seconds in sorted(logged.items()):
    xs.append(step)
    ys.append(ys[-1] + seconds * (step - previous))
    previous = step
  return {s: (float(np.interp(s, xs, ys)) if s <= xs[-1] else None) for s in steps}


# ----------------------------------------------------------------------- evaluation


def read_metrics(directory: str) -> Optional[dict]:
  path = os.path.join(directory, "metrics.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def eval_config(protocol: Protocol, pretrain_dir: str, step: int) -> ml_collections.ConfigDict:
  config = protocol.config.copy_and_resolve_references()
  config.pretrained = pretrain_dir
  config.pretrained_step = step
  return config


def random_init_key(variant: Variant, protocol: Protocol) -> str:
  """What decides `protocol` on the variant's step 0: the encoder it evaluates (the module's
  fields, the parameters of checkpoint 0 it reads), the pool and block the method resolves
  for the protocol, the pretraining run's data and seed. Variants with the same key share
  one evaluation of their random init (five of the six :cifar recipes initialise the same
  encoder, SimMIM's differs; Latent MIM's also reads other features for k-NN and the
  linear probe)."""
  use_target = bool(protocol.config.get("use_target", False))
  encoder, params, config = _initial_encoder(variant.pretrain_dir, use_target)
  pool_block = methods.create(config).eval_defaults.fill(
      protocol.config.protocol, protocol.config.pool, protocol.config.get("block"),
      config.model.depth)
  described = {"encoder": repr(encoder.module), "pool_block": pool_block,
               "data": config.data.to_dict(), "seed": config.seed}
  digest = hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode())
  for leaf in jax.tree.leaves(params):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=2)
def _initial_encoder(pretrain_dir: str, use_target: bool):
  """`pretrained.load_encoder` of a run's checkpoint 0, read once for all the protocols
  of a variant (its online and its target encoder) rather than once per protocol."""
  return pretrained.load_encoder(pretrain_dir, step=0, use_target=use_target)


def evaluate_variant(variant: Variant, budget_steps: dict, protocols: Sequence[Protocol],
                     workdir: str, streamed_at: str = "ends") -> dict:
  """Every protocol on the checkpoints of `budget_steps` it runs on (--streamed_at), step 0
  in the shared random-init directory under `workdir`: the variant's row of
  comparison.json (top-1 None where a protocol does not run)."""
  steps = budget_steps["checkpoint_steps"]
  walls = wall_seconds(variant.pretrain_dir, steps)
  token_cache = run.TokenCache()  # a checkpoint's precomputed protocols encode it once
  rows, sizes = [], {}
  for step in steps:
    row = {"step": step, "epochs": step / budget_steps["steps_per_epoch"],
           "flops": step * budget_steps["flops_per_step"], "wall_seconds": walls[step],
           "top1": {}, "eval_dirs": {}, "features": {}}
    for protocol in protocols:
      if (protocol.config.features == "streamed" and streamed_at == "ends"
          and step not in (steps[0], steps[-1])):
        row["top1"][protocol.label] = None
        continue
      directory = (os.path.join(workdir, "random_init", protocol.key,
                                random_init_key(variant, protocol)) if step == 0 else
                   os.path.join(variant.workdir, "eval", protocol.key, f"step_{step}"))
      metrics = read_metrics(directory)
      if metrics is None:
        metrics = run.evaluate(eval_config(protocol, variant.pretrain_dir, step), directory,
                               token_cache)
      row["top1"][protocol.label] = metrics[protocol.top1]
      row["eval_dirs"][protocol.label] = directory
      sizes = sizes or {k: metrics.get(k) for k in ("num_train", "num_test", "num_classes")}
      if "test_effective_rank" in metrics:  # pooled features: collapse diagnostics
        row["features"][metrics["pool"]] = {k: metrics[f"test_{k}"]
                                            for k in ("effective_rank", "mean_cosine")}
    rows.append(row)
  config = variant.config
  return {"name": variant.name, "spec": variant.spec, "method": config.method.name,
          "workdir": variant.workdir, "budget_steps": budget_steps, "data_sizes": sizes,
          "checkpoints": rows}


def recorded_row(variant: Variant, budget_steps: dict, protocols: Sequence[Protocol],
                 streamed_at: str) -> Optional[dict]:
  """The variant's row from its ROW_FILE when that was written for these protocols (their
  keys: label and config hash), --streamed_at and checkpoints, else None. A variant whose
  row is recorded needs neither its checkpoints nor its evaluation directories."""
  path = os.path.join(variant.workdir, ROW_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    recorded = json.load(f)
  if (recorded["protocols"] != [p.key for p in protocols]
      or recorded["streamed_at"] != streamed_at
      or recorded["row"]["budget_steps"]["checkpoint_steps"] != budget_steps["checkpoint_steps"]):
    return None
  logging.info("%s: read back from %s (no pretraining or evaluation).", variant.name, path)
  return recorded["row"]


def record_row(variant: Variant, row: dict, protocols: Sequence[Protocol],
               streamed_at: str) -> None:
  """Write the variant's evaluated row to its ROW_FILE (`recorded_row` reads it)."""
  recorded = {"protocols": [p.key for p in protocols], "streamed_at": streamed_at, "row": row}
  checkpoint.write_text(variant.workdir, ROW_FILE, json.dumps(recorded, indent=1))


def raw_pixels(variants: Sequence[Variant], protocols: Sequence[Protocol],
               workdir: str) -> List[dict]:
  """The precomputed protocols on raw pixels, once per distinct evaluation data of the
  variants (a streamed protocol trains an encoder: None)."""
  groups: Dict[str, dict] = {}
  precomputed = [p for p in protocols if p.config.features == "precomputed"]
  if not precomputed:
    return []
  for variant in variants:
    _, _, encoder, data_config = run.resolve_for(precomputed[0].config, variant.config)
    module = encoder.module
    setting = {"data": data_config.to_dict(), "patch_size": module.patch_size}
    key = hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:8]
    group = groups.setdefault(key, {
        "name": f"{data_config.data.image_size} px", "key": key,
        "image_size": data_config.data.image_size,
        "patch_size": module.patch_size, "num_heads": module.num_heads,
        "data_config": data_config, "variants": [], "top1": {}, "eval_dirs": {}})
    group["variants"].append(variant.name)
  if len(groups) > 1:
    for group in groups.values():
      group["name"] += f", as {', '.join(group['variants'])}"
  for group in groups.values():
    for protocol in protocols:
      if protocol not in precomputed:
        group["top1"][protocol.label] = None
        continue
      unpooled = protocol.config.copy_and_resolve_references()
      unpooled.pool = None  # pixels are not pooled: one run serves every --pools column
      directory = os.path.join(workdir, "raw_pixels", group["key"],
                               f"{protocol.config.protocol}-{config_hash(unpooled)}")
      metrics = read_metrics(directory) or evaluate_pixels(protocol, group, directory)
      group["top1"][protocol.label] = metrics[protocol.top1]
      group["eval_dirs"][protocol.label] = directory
    del group["data_config"]
  return list(groups.values())


def evaluate_pixels(protocol: Protocol, group: dict, directory: str) -> dict:
  """The protocol on pixel features (run.probe_on_features: metrics.json as
  run.evaluate writes it), with the setting in config.json."""
  config, data_config = protocol.config, group["data_config"]
  patch_size = group["patch_size"] if config.protocol == "attentive_probe" else None
  splits = (data_config.data.train_split, data_config.data.eval_split)
  train_set, test_set = (features.pixel_features(
      data.create_eval_iterator(data_config, split, global_batch_size=config.eval_batch_size),
      patch_size) for split in splits)
  setting = ml_collections.ConfigDict({"eval": config.to_dict(), "data": data_config.to_dict(),
                                       "patch_size": patch_size})
  checkpoint.write_text(directory, checkpoint.CONFIG_FILE, setting.to_json(indent=2))
  heads = math.gcd(group["num_heads"], train_set[0].shape[-1])
  return run.probe_on_features(config, data_config, splits, train_set, test_set, directory, 0,
                               heads, features="raw pixels", patch_size=patch_size)


# -------------------------------------------------------------------------- outputs


def _seconds(x: Optional[float]) -> str:
  if x is None:
    return "—"
  return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _top1(row: dict, labels: Sequence[str]) -> str:
  return " | ".join("—" if row["top1"][k] is None else f"{row['top1'][k]:.1f}" for k in labels)


def random_inits(report: dict) -> List[dict]:
  """The distinct random-init evaluations: one per set of step-0 directories (relative to
  the comparison's workdir, so that a row recorded where the study ran before,
  `recorded_row`, joins the same one), with the variants (and their methods) that share
  it."""
  shared: Dict[tuple, dict] = {}
  for v in report["variants"]:
    zero, workdir = v["checkpoints"][0], os.path.dirname(v["workdir"])
    dirs = {label: os.path.relpath(d, workdir) for label, d in zero["eval_dirs"].items()}
    group = shared.setdefault(tuple(sorted(dirs.items())),
                              {"row": zero, "variants": [], "methods": []})
    group["variants"].append(v["name"])
    if v["method"] not in group["methods"]:
      group["methods"].append(v["method"])
  return list(shared.values())


def features_table(report: dict) -> List[str]:
  """Markdown lines: each checkpoint's test-split features per pool, effective rank /
  mean pairwise cosine (features.representation_stats), the collapse diagnostics; none
  when no protocol pooled features."""
  pools = sorted({pool for v in report["variants"] for row in v["checkpoints"]
                  for pool in row.get("features", {})})
  if not pools:
    return []
  lines = ["", "Test-split features along the way: effective rank (RankMe; at most the "
           "feature width) / mean pairwise cosine similarity (1: collapsed), by pool:", "",
           "| variant | step | " + " | ".join(pools) + " |",
           "| --- | --- |" + " --- |" * len(pools)]
  for v in report["variants"]:
    for row in v["checkpoints"]:
      cells = [f"{row['features'][p]['effective_rank']:.1f} / "
               f"{row['features'][p]['mean_cosine']:.2f}" if p in row.get("features", {})
               else "—" for p in pools]
      lines.append(f"| {v['name']} | {row['step']} | " + " | ".join(cells) + " |")
  return lines


PROTOCOL_NAMES = {"knn": "k-NN", "linear_probe": "linear probe",
                  "attentive_probe": "attentive probe", "finetune": "fine-tuning"}


def margins_table(report: dict) -> List[str]:
  """Markdown lines: each column's top-1 over the variant's own step 0 (its random
  init), at the first checkpoint after it and at the last ('first → last'; one figure
  where the protocol ran once after step 0)."""
  labels = [p["label"] for p in report["protocols"]]
  lines = ["", "Over each variant's random init (top-1 − its step 0's; first checkpoint "
           "after step 0 → last):", "", "| variant | " + " | ".join(labels) + " |",
           "| --- |" + " --- |" * len(labels)]
  for v in report["variants"]:
    cells = []
    for label in labels:
      base = v["checkpoints"][0]["top1"][label]
      later = [row["top1"][label] for row in v["checkpoints"][1:]
               if row["top1"][label] is not None]
      if base is None or not later:
        cells.append("—")
      else:
        ends = later if len(later) == 1 else [later[0], later[-1]]
        cells.append(" → ".join(f"{x - base:+.1f}" for x in ends))
    lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
  return lines


def _best(report: dict, variant: dict, protocol: str):
  """(top-1, column) of `protocol`'s best column at the variant's last checkpoint, or
  (None, None) where no column of it ran there."""
  last = variant["checkpoints"][-1]["top1"]
  ran = [(last[p["label"]], p["label"]) for p in report["protocols"]
         if p["protocol"] == protocol and last[p["label"]] is not None]
  return max(ran) if ran else (None, None)


def claims_table(report: dict) -> List[str]:
  """Markdown lines: the directions the variants' methods declare from their papers
  (`Method.claims`) against each variant of the method they name, checked at the last
  checkpoints; none when no variant's method declares one."""
  rows = []
  for v in report["variants"]:
    for claim in methods.METHODS[v["method"]].claims:
      name = PROTOCOL_NAMES[claim.protocol]
      what = (f"{v['method']}: fewer FLOPs per step than {claim.over}, {name} not below it"
              if claim.cheaper else f"{v['method']}: {name} above {claim.over}")
      baselines = [b for b in report["variants"] if b["method"] == claim.over]
      if not baselines:
        rows.append(f"| {what} | {claim.paper} | no {claim.over} variant in this study | — |")
      for b in baselines:
        rows.append(f"| {what} | {claim.paper} | {_claim_cells(report, claim, v, b)} |")
  if not rows:
    return []
  return ["", "Directions the methods' papers report, on this study (last checkpoints, "
          "each variant at its best column of the protocol):", "",
          "| claim | the paper | this study | agrees |", "| --- | --- | --- | --- |"] + rows


def _claim_cells(report: dict, claim, variant: dict, baseline: dict) -> str:
  """'what this study measured | yes/no/—' for `claim` of `variant` against `baseline`."""
  name = PROTOCOL_NAMES[claim.protocol]
  (top1, label), (base_top1, base_label) = (_best(report, x, claim.protocol)
                                            for x in (variant, baseline))
  accuracy = (f"{name} {top1:.1f} ({label}) against {base_top1:.1f} ({base_label})"
              if None not in (top1, base_top1) else f"no {name} on both")
  if not claim.cheaper:
    verdict = "—" if None in (top1, base_top1) else ("yes" if top1 > base_top1 else "no")
    return f"{variant['name']} against {baseline['name']}: {accuracy} | {verdict}"
  flops, base_flops = (x["budget_steps"]["flops_per_step"] for x in (variant, baseline))
  fewer_flops = flops < base_flops
  verdict = ("—" if None in (top1, base_top1) else
             "yes" if fewer_flops and top1 >= base_top1 else "no")
  return (f"{variant['name']} against {baseline['name']}: {flops:.3g} FLOPs per step against "
          f"{base_flops:.3g} ({flops / base_flops:.2f}×); {accuracy} | {verdict}")


def markdown(report: dict, figure_links: Dict[str, str]) -> str:
  """The tables (final checkpoints with baselines, then every checkpoint) and plots."""
  labels = [p["label"] for p in report["protocols"]]
  head = "| " + " | ".join(labels) + " |"
  rule = " --- |" * len(labels)
  sample = report["variants"][0]["data_sizes"]
  protocols = "; ".join(f"{p['label']} (`{p['spec']}`"
                        + "".join(f", {o}" for o in p["overrides"])
                        + (f", {p['picked']}" if p.get("picked") else "") + ")"
                        for p in report["protocols"])
  lines = [
      f"Budget per variant: `{report['budget']}`. Data: {report['data']}: "
      f"{sample.get('num_train')} train / {sample.get('num_test')} test images, "
      f"{sample.get('num_classes')} classes. Protocols: {protocols}. Top-1 in %. FLOPs: "
      "XLA's count of the compiled train step × steps; wall time: the trainer's logged "
      "step_time (compilation excluded). Random init: the variants' step 0, evaluated once "
      "for the variants that share it (fine-tuned: training from scratch); —: not run there "
      "(a streamed protocol runs at the ends, `--streamed_at`).",
      "", "| variant | method | steps | epochs | pretraining FLOPs | wall time (s) " + head,
      "| --- | --- | --- | --- | --- | --- |" + rule]
  for v in report["variants"]:
    last = v["checkpoints"][-1]
    lines.append(f"| {v['name']} | {v['method']} | {last['step']} | {last['epochs']:.2f} | "
                 f"{last['flops']:.3g} | {_seconds(last['wall_seconds'])} | "
                 + _top1(last, labels) + " |")
  for init in random_inits(report):
    lines.append(f"| random init ({', '.join(init['variants'])}) | "
                 f"{', '.join(init['methods'])} | 0 | 0 | 0 | 0 | {_top1(init['row'], labels)} |")
  for group in report["raw_pixels"]:
    lines.append(f"| raw pixels ({group['name']}) | — | 0 | 0 | 0 | 0 | "
                 + " | ".join("—" if group["top1"][k] is None else f"{group['top1'][k]:.1f}"
                              for k in labels) + " |")
  lines += ["", "Along the way:", "",
            "| variant | step | epochs | pretraining FLOPs | wall time (s) " + head,
            "| --- | --- | --- | --- | --- |" + rule]
  for v in report["variants"]:
    for row in v["checkpoints"]:
      lines.append(f"| {v['name']} | {row['step']} | {row['epochs']:.2f} | {row['flops']:.3g} "
                   f"| {_seconds(row['wall_seconds'])} | {_top1(row, labels)} |")
  lines += margins_table(report)
  lines += features_table(report)
  lines += claims_table(report)
  lines.append("")
  lines += [f"![top-1 against {FIGURES[axis][1]}]({link})"
            for axis, link in figure_links.items()]
  return "\n".join(lines) + "\n"


def plot(report: dict, axis: str, path: str) -> None:
  """Top-1 against `axis` ('flops' or 'wall_seconds'), one panel per protocol."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

  labels = [p["label"] for p in report["protocols"]]
  fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4), squeeze=False)
  for ax, label in zip(axes[0], labels):
    for i, v in enumerate(report["variants"]):
      points = [(row[axis], row["top1"][label]) for row in v["checkpoints"]
                if row[axis] is not None and row["top1"][label] is not None]
      ax.plot(*zip(*points), marker="o", color=f"C{i}", label=v["name"])
      ax.axhline(v["checkpoints"][0]["top1"][label], color=f"C{i}", linestyle=":",
                 linewidth=1)
    for j, group in enumerate(g for g in report["raw_pixels"] if g["top1"][label] is not None):
      ax.axhline(group["top1"][label], color="black", linestyle=("--", "-.")[j % 2],
                 linewidth=1, label=f"raw pixels ({group['name']})")
    ax.set_title(label)
    ax.set_xlabel(FIGURES[axis][1])
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  handles.append(Line2D([], [], color="grey", linestyle=":", linewidth=1))
  names.append("random init (step 0)")
  # below the panels, where it hides no point
  legend = fig.legend(handles, names, fontsize="small", loc="upper center",
                      bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=100, bbox_extra_artists=[legend], bbox_inches="tight")
  plt.close(fig)


def describe_data(variants: Sequence[Variant]) -> str:
  described = set()
  for v in variants:
    d = v.config.data
    where = {"npz": d.path, "image_folder": d.path, "tfds": d.tfds_name}.get(d.source, "")
    described.add(f"{d.source} {where}".strip() + f", splits {d.train_split}/{d.eval_split}")
  return "; ".join(sorted(described))


def write_outputs(report: dict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  for axis, (name, _) in FIGURES.items():
    plot(report, axis, os.path.join(workdir, name))
  links = {axis: name for axis, (name, _) in FIGURES.items()}
  with open(os.path.join(workdir, "comparison.md"), "w") as f:
    f.write("# Pretraining comparison\n\n" + markdown(report, links))
  with open(os.path.join(workdir, "comparison.json"), "w") as f:
    json.dump(report, f, indent=1)


def publish(report: dict, workdir: str, results_path: str, section: str) -> None:
  """Replace `section` of the results document with the tables and the copied plots."""
  links = {axis: results_doc.copy_figure(os.path.join(workdir, name), results_path,
                                         f"{section}_{name}")
           for axis, (name, _) in FIGURES.items()}
  results_doc.write_section(results_path, section, "Pretraining comparison",
                            markdown(report, links), report["command"], report["machine"],
                            report["date"])


def compare(specs: Sequence[str], workdir: str, budget: str, *,
            data_overrides: Sequence[str] = (), protocol_names: Sequence[str] = COMPARED,
            eval_overrides: Sequence[str] = (), pools: Sequence[str] = (),
            streamed_at: str = "ends", num_checkpoints: int = 4, measure_steps: int = 5,
            command: str = "") -> Optional[dict]:
  """Pretrain, evaluate and tabulate (module docstring); returns comparison.json's
  content, or None when a pretraining run was stopped (rerun to continue)."""
  budget = Budget.parse(budget)
  if num_checkpoints < 1 or measure_steps < 1:
    raise app.UsageError("--num_checkpoints and --measure_steps must be at least 1.")
  if streamed_at not in STREAMED_AT:
    raise app.UsageError(f"--streamed_at={streamed_at!r}: choose one of {STREAMED_AT}.")
  variants = load_variants(specs, data_overrides, workdir)
  protocols = load_protocols(protocol_names, eval_overrides, variants, pools)
  for variant in variants:
    validate(variant, budget, num_checkpoints)
  rows = []
  for variant in variants:
    budget_steps = read_budget_steps(variant, budget, num_checkpoints)
    if budget_steps is None:
      budget_steps = convert_budget(variant, budget, num_checkpoints, measure_steps)
      checkpoint.write_text(variant.workdir, BUDGET_FILE, json.dumps(budget_steps, indent=1))
    logging.info("%s: %s", variant.name, budget_steps["how"])
    row = recorded_row(variant, budget_steps, protocols, streamed_at)
    if row is None:
      if not pretrain_variant(variant, budget_steps):
        logging.warning("Pretraining of %s stopped early; run the same command again to "
                        "continue.", variant.name)
        return None
      row = evaluate_variant(variant, budget_steps, protocols, workdir, streamed_at)
      record_row(variant, row, protocols, streamed_at)
    rows.append(row)
  report = {
      "command": command, "machine": results_doc.machine(), "date": results_doc.now(),
      "budget": budget.text, "num_checkpoints": num_checkpoints, "streamed_at": streamed_at,
      "data": describe_data(variants),
      "data_overrides": list(data_overrides),
      "protocols": [{"label": p.label, "spec": p.spec, "protocol": p.config.protocol,
                     "top1_key": p.top1, "key": p.key, "overrides": p.overrides,
                     "picked": p.picked,
                     "config": p.config.to_dict()} for p in protocols],
      "variants": rows, "raw_pixels": raw_pixels(variants, protocols, workdir)}
  write_outputs(report, workdir)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("Set --workdir.")
  section = results_doc.requested_section()
  report = compare(FLAGS.configs, FLAGS.workdir, FLAGS.budget, data_overrides=FLAGS.data,
                   protocol_names=FLAGS.protocols, eval_overrides=FLAGS.eval_override,
                   pools=FLAGS.pools, streamed_at=FLAGS.streamed_at,
                   num_checkpoints=FLAGS.num_checkpoints, measure_steps=FLAGS.measure_steps,
                   command=results_doc.command_line("mim_jax.tools.compare"))
  if report is None:
    return
  print(open(os.path.join(FLAGS.workdir, "comparison.md")).read())
  if section is not None:
    publish(report, FLAGS.workdir, FLAGS.results, section)


if __name__ == "__main__":
  define_flags()
  app.run(main)
