"""mim_jax/tools/profile_step.py: time shared among overlapping instructions, the
FLOPs read from the compiled HLO, the operation classes, and a profiled tiny MAE step."""
import jax
import jax.numpy as jnp
import pytest

from mim_jax import config_files
from mim_jax.tools import profile_step
from mim_jax.tools.compiled_step import CompiledStep

import configs.mae


def test_overlapping_instructions_share_their_time_equally():
  times = profile_step.exclusive_times([("a", 0.0, 10.0), ("b", 5.0, 10.0),
                                        ("c", 20.0, 5.0)])
  assert times == pytest.approx({"a": 7.5, "b": 7.5, "c": 5.0})


def test_matmul_flops_are_read_from_the_compiled_program():
  m, k, n = 24, 40, 16
  compiled = jax.jit(lambda a, b: jnp.tanh(a.T @ b)).lower(
      jnp.ones((k, m)), jnp.ones((k, n))).compile()
  instructions, computations = profile_step.hlo_instructions(compiled.as_text())
  flops = sum(profile_step.instruction_ops(name, instructions, computations)[1]
              for name in instructions)
  assert flops == 2 * m * k * n


@pytest.mark.parametrize("ops,flops,meta,expected", [
    ({"dot"}, 1e9, "jit(train_step)/jvp(MAEDecoder)/decoder_blocks_0/mlp/fc1/dot_general",
     "matmul"),
    ({"dot", "exponential", "reduce", "subtract"}, 3e8, "jvp(MAEDecoder)/b_0/attn/reduce_max",
     "attention softmax"),
    ({"multiply"}, 0, "jvp(MAEDecoder)/decoder_blocks_2/attn/div", "attention softmax"),
    ({"add", "erf", "multiply"}, 0, "jvp(MAEDecoder)/decoder_blocks_1/mlp/erf", "GELU"),
    ({"multiply", "reduce"}, 0, "transpose(jvp(ViTEncoder))/blocks_0/norm2/reduce_sum",
     "LayerNorm"),
    ({"multiply", "reduce"}, 0, "jvp(MAEDecoder)/decoder_norm/reduce_sum", "LayerNorm"),
    ({"add", "sqrt", "divide"}, 0, "jit(train_step)/cond/branch_1_fun/add", "optimizer update"),
    ({"copy", "transpose"}, 0, "transpose(jvp(MAEDecoder))/decoder_blocks_7/mlp/add_any",
     "copies/transposes"),
    ({"gather"}, 0, "jvp(ViTEncoder)/take_along_axis", "masking gather/scatter"),
    ({"add", "multiply"}, 0, "jit(train_step)/jvp()/sub", "other"),
])
def test_operation_classes(ops, flops, meta, expected):
  assert profile_step.op_class(ops, flops, meta) == expected


def test_a_profiled_tiny_mae_step_is_split_into_its_classes():
  # a decoder 256 wide (2 blocks): a step whose FLOPs are nearly all matmuls (98%)
  config = config_files.shrink(configs.mae.get_config(), **{
      "model.decoder_width": 256, "model.decoder_depth": 2, "model.decoder_num_heads": 8})
  step = CompiledStep(config, count_model_flops=False)
  table = profile_step.profile_ours(step, steps=2)
  for name in ("matmul", "attention softmax", "GELU", "LayerNorm", "optimizer update"):
    assert table[name]["ms"] > 0, name
  # The dots of the executed instructions (per step) are nearly all of XLA's FLOP count.
  dot_flops = (table["matmul"]["gflop"] + table["attention softmax"]["gflop"]) * 1e9
  assert 0.9 * step.step_flops < dot_flops <= step.step_flops
