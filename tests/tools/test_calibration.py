"""The planner's calibration on MaxText's measured v5e runs (mim_jax/tools/calibration.py):
the runs' sizes and FLOP count, the LM step's attention, and a tiny LM step compiled for
v5e."""
import importlib.util

import jax
import numpy as np
import pytest

from mim_jax.tools import calibration, tpu_model

TINY = calibration.LMRun("tiny", emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                         num_layers=2, vocab=100, seq=512, per_device_batch=2,
                         measured_mfu=0.5, source="test")


def test_the_runs_are_maxtexts_16b_and_32b_models():
  assert calibration.MAXTEXT_RUNS["16b"].num_params == pytest.approx(15.83e9, rel=1e-3)
  assert calibration.MAXTEXT_RUNS["32b"].num_params == pytest.approx(31.66e9, rel=1e-3)
  assert TINY.num_params == sum(np.prod(a.shape) for a in calibration.lm_params(TINY).values())
  # 6 · params · tokens + 12 · layers · heads · head_dim · seq² · batch / 2
  tokens = 2 * 512
  assert calibration.maxtext_flops_per_device(TINY) == (
      6 * TINY.num_params * tokens + 12 * 2 * 4 * 16 * 512**2 * 2 / 2)
  # 16B: 1207 TFLOP per device and step; at the measured 61.10% of 197 TFLOP/s, 10.0 s
  flops = calibration.maxtext_flops_per_device(calibration.MAXTEXT_RUNS["16b"])
  assert flops / (0.611 * 197e12) == pytest.approx(10.03, abs=0.01)


def test_blockwise_causal_attention_equals_dense_causal_attention():
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 512, 4, 16)) for i in range(3))
  dense = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(calibration._blockwise_causal_attention(q, k, v), dense,
                             atol=2e-6)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install -e '.[tpu]')")
def test_a_tiny_lm_step_compiles_for_v5e_and_is_compared_with_its_measured_mfu():
  record = calibration.calibrate(TINY, tpu_model.parse_topology("v5e:2x2"))
  flops = calibration.maxtext_flops_per_device(TINY)
  assert record["flops_per_device"] == flops
  assert record["measured_step_s"] == pytest.approx(flops / (0.5 * 197e12))
  assert record["estimated_mfu"] == pytest.approx(flops / record["step_s"] / 197e12)
  assert record["calibration"] == pytest.approx(0.5 / record["estimated_mfu"])
  assert record["step_s"] > 0 and record["by_class"]["matmul"] > 0
  assert "16B" not in calibration.describe(record) and "tiny" in calibration.describe(record)
