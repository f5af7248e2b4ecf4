"""Calibrate the pod planner's step-time estimate on public measurements: MaxText's v5e runs.

python -m mim_jax.tools.calibration [--runs=16b,32b] [--output=calibration.jsonl]

MaxText's `MaxText/configs/v5e/README.md` (github.com/AI-Hypercomputer/maxtext) reports the
MFU its 16B and 32B decoder LMs measured on one v5e-256 slice: 61.10% (120 TFLOP/s per
chip) and 66.86% (132), each with its script (`configs/v5e/16b.sh`, `32b.sh`: base.yml
with global_parameter_scale 16 / 32, per-device batch 6 / 4, sequence 2048, remat 'full',
bf16 compute on float32 weights, flash attention, FSDP over all 256 chips). This program
builds a train step of the same shapes in plain JAX (`lm_train_step`: token embedding,
scanned llama2-style blocks, RMSNorm, rotary positions, causal attention, SiLU-gated MLP,
float32 logits, cross-entropy, AdamW), compiles it for v5e:16x16 exactly as `aot` compiles
ours, and estimates its step time with the same model (tpu_model.estimate_step_time). The
FLOPs are MaxText's own count for its MFU (`maxtext_flops_per_device`: PaLM appendix B,
6 · parameters · tokens plus causal attention), so estimate and measurement are MFUs of the
same numerator, and

    calibration = measured MFU ÷ estimated MFU = estimated step time ÷ measured step time.

tpu_model.CALIBRATIONS holds the result with its source; `aot` prints each step's MFU
raw and calibrated (raw × calibration). What the calibration covers: steps whose time is
matmuls fed from HBM at large per-chip batches (these LMs spend about 95% of their FLOPs
in weight matmuls). What it does not: our attention is XLA's (the whole S × S score
matrix in query blocks, its masked half included) where MaxText ran a flash kernel, which makes our
estimate of their step slower than theirs would be; and it says nothing about steps
dominated by layout copies, reductions or exposed collectives, the parts of the MAE
step (tpu_model's breakdown) that these LMs hardly have.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process compiles; it never runs a TPU
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # see aot.py

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Dict  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from mim_jax.tools import tpu_model  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags (mim_jax/tools/__init__.py says why a function defines them)."""
  flags.DEFINE_list("runs", list(MAXTEXT_RUNS), "MaxText runs to compile and compare.")
  flags.DEFINE_string("output", None, "Append each run's figures to this file as a JSON line.")


@dataclasses.dataclass(frozen=True)
class LMRun:
  """A measured MaxText run: the model (base.yml scaled by global_parameter_scale, the
  scales of MaxText's pyconfig.get_individual_scales), its batch and its measured MFU."""
  name: str
  emb_dim: int
  num_heads: int  # query heads = kv heads (base.yml's 16 each, scaled alike)
  head_dim: int
  mlp_dim: int
  num_layers: int
  vocab: int
  seq: int
  per_device_batch: int
  measured_mfu: float
  source: str

  @property
  def num_params(self) -> int:
    e, hd = self.emb_dim, self.num_heads * self.head_dim
    per_layer = 4 * e * hd + 3 * e * self.mlp_dim + 2 * e
    return self.num_layers * per_layer + 2 * self.vocab * e + e


_SOURCE = ("MaxText/configs/v5e/README.md and configs/v5e/{}.sh, "
           "github.com/AI-Hypercomputer/maxtext: 1x v5e-256")
# global_parameter_scale 16: emb 2·2048, heads 4·16, mlp 4·7168, layers 2·16;
# 32: emb 4·2048, heads 4·16, mlp 4·7168, layers 2·16 (head_dim 128, vocab 32000)
MAXTEXT_RUNS = {
    "16b": LMRun("16b", 4096, 64, 128, 28672, 32, 32000, 2048, 6, 0.6110,
                 _SOURCE.format("16b")),
    "32b": LMRun("32b", 8192, 64, 128, 28672, 32, 32000, 2048, 4, 0.6686,
                 _SOURCE.format("32b")),
}


def maxtext_flops_per_device(run: LMRun) -> float:
  """MaxText's training FLOPs per device and step (maxtext_utils.py, after PaLM appendix
  B): 6 · parameters · tokens, plus causal attention 12 · layers · heads · head_dim · seq²
  · batch / 2."""
  tokens = run.per_device_batch * run.seq
  attention = 12 * run.num_layers * run.num_heads * run.head_dim * run.seq**2 * (
      run.per_device_batch) / 2
  return 6.0 * run.num_params * tokens + attention


def _rms_norm(x, scale):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-5)
  return (x32 * scale).astype(x.dtype)


def _rotary(x):
  """Rotary positions on [B, S, H, D] (the llama2 block's)."""
  d = x.shape[-1] // 2
  freq = 1.0 / (10000.0 ** (jnp.arange(d, dtype=jnp.float32) / d))
  angle = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * freq
  sin, cos = jnp.sin(angle)[None, :, None], jnp.cos(angle)[None, :, None]
  x1, x2 = x[..., :d].astype(jnp.float32), x[..., d:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


QUERY_BLOCK = 256


def _blockwise_causal_attention(q, k, v):
  """Causal softmax attention of [B, S, H, D] queries in blocks of QUERY_BLOCK, each block
  rematerialised, so that one block's [B, H, QUERY_BLOCK, S] scores live at a time (a
  whole S × S matrix per layer does not fit 16 GiB at these batches; MaxText's flash
  kernel never forms one). Every block attends to all S keys, the masked ones included:
  twice the FLOPs of causal attention, which MaxText's count halves."""
  b, s, h, d = q.shape
  blocks = q.reshape(b, s // QUERY_BLOCK, QUERY_BLOCK, h, d).swapaxes(0, 1)

  @jax.checkpoint
  def one_block(args):
    start, qb = args
    scores = jnp.einsum("bqhd,bkhd->bhqk", qb, k).astype(jnp.float32) / np.sqrt(d)
    rows = start + jnp.arange(QUERY_BLOCK)[:, None]
    scores = jnp.where(rows >= jnp.arange(s)[None, :], scores, -1e9)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores).astype(q.dtype), v)

  starts = jnp.arange(0, s, QUERY_BLOCK)
  return jax.lax.map(one_block, (starts, blocks)).swapaxes(0, 1).reshape(b, s, h, d)


def lm_params(run: LMRun) -> Dict[str, jax.ShapeDtypeStruct]:
  """float32 parameter shapes; the blocks' stacked on a leading layer axis (scanned)."""
  e, hd, m, n = run.emb_dim, run.num_heads * run.head_dim, run.mlp_dim, run.num_layers
  shapes = {"embed": (run.vocab, e), "unembed": (e, run.vocab), "final_norm": (e,),
            "wq": (n, e, hd), "wk": (n, e, hd), "wv": (n, e, hd), "wo": (n, hd, e),
            "w_gate": (n, e, m), "w_up": (n, e, m), "w_down": (n, m, e),
            "attn_norm": (n, e), "mlp_norm": (n, e)}
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def param_specs(params) -> Dict[str, P]:
  """FSDP over every chip: each matrix split along its embedding dimension."""
  specs = {"embed": P(None, "fsdp"), "unembed": P("fsdp", None), "final_norm": P(),
           "wo": P(None, None, "fsdp"), "w_down": P(None, None, "fsdp"),
           "attn_norm": P(), "mlp_norm": P()}
  return {k: specs.get(k, P(None, "fsdp", None)) for k in params}


def lm_loss(params, tokens, run: LMRun, mesh: Mesh):
  """Next-token cross-entropy of the decoder on [B, S] tokens (bf16 compute)."""
  act = NamedSharding(mesh, P("fsdp", None, None))
  bf = lambda w: w.astype(jnp.bfloat16)
  x = jax.lax.with_sharding_constraint(bf(params["embed"])[tokens], act)
  b, s = tokens.shape

  def block(x, w):
    h = _rms_norm(x, w["attn_norm"])
    q, k, v = (jnp.einsum("bse,ef->bsf", h, bf(w[n])).reshape(b, s, run.num_heads,
                                                              run.head_dim)
               for n in ("wq", "wk", "wv"))
    q, k = _rotary(q), _rotary(k)
    att = _blockwise_causal_attention(q, k, v)
    x = x + jnp.einsum("bsf,fe->bse", att.reshape(b, s, -1), bf(w["wo"]))
    h = _rms_norm(x, w["mlp_norm"])
    gate = jax.nn.silu(jnp.einsum("bse,em->bsm", h, bf(w["w_gate"])))
    up = jnp.einsum("bse,em->bsm", h, bf(w["w_up"]))
    x = x + jnp.einsum("bsm,me->bse", gate * up, bf(w["w_down"]))
    return jax.lax.with_sharding_constraint(x, act), None

  layers = {k: v for k, v in params.items() if k not in ("embed", "unembed", "final_norm")}
  remat = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable)
  x, _ = jax.lax.scan(remat, x, layers)
  x = _rms_norm(x, params["final_norm"])
  logits = jnp.einsum("bse,ev->bsv", x.astype(jnp.float32), params["unembed"])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits[:, :-1], tokens[:, 1:]).mean()


def lm_train_step(run: LMRun, mesh: Mesh):
  """(jitted step, abstract state, abstract tokens): loss, gradients and AdamW on the
  sharded float32 parameters, state donated."""
  tx = optax.adamw(1e-4)
  abstract = lambda tree, shardings: jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
  shardings = {k: NamedSharding(mesh, spec) for k, spec in param_specs(lm_params(run)).items()}
  params = abstract(lm_params(run), shardings)
  opt_state = jax.eval_shape(tx.init, params)
  opt_state = abstract(opt_state, optax.tree_map_params(
      tx, lambda _, s: s, opt_state, shardings,
      transform_non_params=lambda _: NamedSharding(mesh, P())))
  tokens = jax.ShapeDtypeStruct((run.per_device_batch * mesh.size, run.seq), jnp.int32,
                                sharding=NamedSharding(mesh, P("fsdp", None)))

  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(lm_loss)(params, tokens, run, mesh)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state_shardings = jax.tree.map(lambda a: a.sharding, (params, opt_state))
  jitted = jax.jit(step, out_shardings=state_shardings + (NamedSharding(mesh, P()),),
                   donate_argnums=(0, 1))
  return jitted, (params, opt_state), tokens


def calibrate(run: LMRun, topology: tpu_model.Topology) -> dict:
  """Compile `run`'s step for `topology`, estimate it, and compare with the measured MFU."""
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel  (libtpu's flags)
  mesh = Mesh(np.array(aot.topology_devices(topology)), ("fsdp",))
  start = time.perf_counter()
  step, (params, opt_state), tokens = lm_train_step(run, mesh)
  executable = step.lower(params, opt_state, tokens).compile()
  compile_s = time.perf_counter() - start
  memory = tpu_model.memory_from_analysis(executable.memory_analysis())
  estimate = tpu_model.estimate_step_time(executable.as_text(), topology.chip)
  flops = maxtext_flops_per_device(run)
  estimated_mfu = tpu_model.mfu(flops, estimate.seconds, topology.chip)
  return dict(run=run.name, topology=topology.name, params=run.num_params,
              flops_per_device=flops, step_s=estimate.seconds,
              measured_step_s=flops / (run.measured_mfu * topology.chip.peak_bf16_flops),
              estimated_mfu=estimated_mfu, measured_mfu=run.measured_mfu,
              calibration=run.measured_mfu / estimated_mfu, by_class=estimate.by_class,
              collective_s=estimate.collective_seconds, gib_per_chip=memory.total / 2**30,
              compile_s=round(compile_s, 1), source=run.source)


def describe(record: dict) -> str:
  by_class = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in sorted(
      record["by_class"].items(), key=lambda kv: -kv[1]))
  return (f"MaxText {record['run']} ({record['params'] / 1e9:.1f}B parameters) on "
          f"{record['topology']}: estimated {record['step_s']:.2f} s per step ({by_class} ms), "
          f"MFU {record['estimated_mfu']:.1%}; measured {record['measured_mfu']:.2%} "
          f"({record['measured_step_s']:.2f} s): calibration {record['calibration']:.2f} "
          f"({record['gib_per_chip']:.1f} GiB per chip, compiled in {record['compile_s']:.0f} s)")


def main(argv):
  del argv
  topology = tpu_model.parse_topology("v5e:16x16")
  unknown = sorted(set(FLAGS.runs) - set(MAXTEXT_RUNS))
  if unknown:
    raise app.UsageError(f"--runs: unknown {unknown}; choose from {sorted(MAXTEXT_RUNS)}.")
  for name in FLAGS.runs:
    record = calibrate(MAXTEXT_RUNS[name], topology)
    print(describe(record), flush=True)
    if FLAGS.output:
      with open(FLAGS.output, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
