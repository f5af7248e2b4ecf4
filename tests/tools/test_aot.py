"""The pod planner (mim_jax/tools/aot.py, tpu_model.py): chip table, memory and MFU
arithmetic, the step-time model on hand-written HLO, and, with libtpu (the `tpu` extra), a
tiny train step compiled for TPU v5e slices."""
import dataclasses
import importlib.util

import pytest
from conftest import config_file, tiny_mae_config

from mim_jax.models import vit
from mim_jax.tools import tpu_model
from mim_jax.tools.tpu_model import CHIPS, GIB

V5E = CHIPS["v5e"]


def test_chip_table_clocks_and_capacities():
  # clock = peak bf16 / (TensorCores x MXUs x 2 x side^2): v4 1050 MHz, v5e 1.5 GHz
  assert CHIPS["v4"].clock_hz == pytest.approx(275e12 / (2 * 4 * 2 * 128**2))
  assert CHIPS["v4"].clock_hz == pytest.approx(1.049e9, rel=1e-3)
  assert V5E.clock_hz == pytest.approx(1.503e9, rel=1e-3)
  assert CHIPS["v5p"].clock_hz == pytest.approx(1.751e9, rel=1e-3)
  assert CHIPS["v6e"].clock_hz == pytest.approx(1.751e9, rel=1e-3)
  assert {k: c.hbm_bytes / GIB for k, c in CHIPS.items()} == {
      "v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
  assert V5E.collective_bytes_per_s == 200e9  # 51.2 TB/s all-reduce per 256-chip pod
  assert all(s.startswith("https://") for c in CHIPS.values() for s in c.sources)


def test_mfu_images_and_headroom_arithmetic():
  # 3.8 TFLOP per chip in 0.1 s on a 197 TFLOP/s chip
  assert tpu_model.mfu(3.8e12, 0.1, V5E) == pytest.approx(38e12 / 197e12)
  assert tpu_model.images_per_second(4096, 0.5) == 8192
  m = tpu_model.Memory(arguments=2 * GIB, outputs=GIB, aliased=GIB, temporaries=10 * GIB,
                       code=GIB // 2)
  assert m.total == 12.5 * GIB
  assert m.headroom(V5E) == pytest.approx(1 - 12.5 / 16)
  assert m.fits(V5E)  # 12.5 <= 0.9 * 16 = 14.4 GiB
  over = tpu_model.Memory(2 * GIB, GIB, GIB, 12 * GIB + GIB // 2, 0)  # 14.5 GiB
  assert not over.fits(V5E) and over.headroom(V5E) > 0


def test_topology_names_and_libtpu_arguments():
  pod = tpu_model.parse_topology("v5e:16x16")
  assert (pod.num_chips, pod.name) == (256, "v5e:16x16")
  assert pod.libtpu_kwargs() == dict(platform="tpu", topology_name="v5e:16x16",
                                     chip_config_name="default", chips_per_host_bounds=(2, 2, 1),
                                     wrap=(True, True, False))
  v5p = tpu_model.parse_topology("v5p:4x4x4")  # v5p-128: 64 chips, two cores each
  assert v5p.num_chips == 64
  assert v5p.libtpu_kwargs()["topology_name"] == "v5:4x4x4"
  assert v5p.libtpu_kwargs()["chip_config_name"] == "megacore"
  assert tpu_model.parse_topology("v4:2x4x4").libtpu_kwargs()["wrap"] == (False,) * 3
  for bad in ("v5e-256", "v5e:16", "v7:2x2", "v4:4x4"):
    with pytest.raises(ValueError, match="--topology"):
      tpu_model.parse_topology(bad)


def test_replica_groups_shapes_and_ring_bytes():
  size = tpu_model.replica_group_size
  assert size("replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}", 8) == 4
  assert size("replica_groups=[2,4]<=[8]", 8) == 4
  mesh = "replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, use_global_device_ids=true"
  assert size(mesh, 8) == 4
  assert size(mesh, 8, {"axis_0": 128}) == 128  # a proxy standing in for 256 chips
  assert size("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0','axis_1'}", 8) == 8
  assert size("channel_id=1", 8) == 8
  assert tpu_model.shape_bytes("(bf16[2,3]{1,0}, f32[]{:T(128)}, pred[5])") == 12 + 4 + 5
  wire = tpu_model.collective_wire_bytes
  assert wire("all-gather", 100, 400, 4) == 300
  assert wire("reduce-scatter", 400, 100, 4) == 300
  assert wire("all-reduce", 400, 400, 4) == 600
  assert wire("all-reduce", 400, 100, 4, as_reduce_scatter=True) == 300
  assert wire("all-reduce", 400, 400, 1) == 0


# A scheduled module as the TPU compiler prints it, cut down: a 12-step loop of one matmul
# fusion (1500 cycles), an all-gather started before the loop and waited for after it, a
# synchronous all-reduce and a final elementwise fusion (300 cycles).
HLO = """HloModule test, is_scheduled=true, num_partitions=4

%fused_matmul (p0: bf16[128,128], p1: bf16[128,128]) -> bf16[128,128] {
  %p0 = bf16[128,128]{1,0} parameter(0)
  %p1 = bf16[128,128]{1,0} parameter(1)
  ROOT %convolution.1 = bf16[128,128]{1,0} convolution(%p0, %p1), dim_labels=bf_io->bf
}

%fused_add (p2: f32[128]) -> f32[128] {
  %p2 = f32[128]{0} parameter(0)
  ROOT %add.1 = f32[128]{0} add(%p2, %p2)
}

%body (arg: (s32[], bf16[128,128])) -> (s32[], bf16[128,128]) {
  %arg = (s32[], bf16[128,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = bf16[128,128]{1,0} get-tuple-element(%arg), index=1
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %mm = bf16[128,128]{1,0} fusion(%x, %x), kind=kOutput, calls=%fused_matmul, @MM@
  ROOT %t = (s32[], bf16[128,128]{1,0}) tuple(%next, %mm)
}

%cond (carg: (s32[], bf16[128,128])) -> pred[] {
  %carg = (s32[], bf16[128,128]{1,0}) parameter(0)
  %ci = s32[] get-tuple-element(%carg), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%ci, %n), direction=LT
}

ENTRY %main (x0: bf16[128,128], g: f32[1048576]) -> f32[128] {
  %x0 = bf16[128,128]{1,0} parameter(0)
  %g = f32[1048576]{0} parameter(1)
  %zero = s32[] constant(0)
  %c = s32[] copy(%zero)
  %init = (s32[], bf16[128,128]{1,0}) tuple(%c, %x0)
  %ags = (f32[1048576]{0}, f32[4194304]{0}) all-gather-start(%g), @AG@
  %loop = (s32[], bf16[128,128]{1,0}) while(%init), condition=%cond, body=%body
  %agd = f32[4194304]{0} all-gather-done(%ags)
  %small = f32[1024]{0} slice(%g), slice={[0:1024]}
  %ar = f32[1024]{0} all-reduce(%small), replica_groups=[1,4]<=[4], to_apply=%fused_add
  %h = f32[128]{0} slice(%ar), slice={[0:128]}
  ROOT %out = f32[128]{0} fusion(%h), kind=kLoop, calls=%fused_add, @OUT@
}
""".replace("@MM@", 'metadata={op_name="jit(f)/while/body/blocks_3/dot_general"}, '
            'backend_config={"estimated_cycles":"1500"}').replace(
                "@AG@", "replica_groups={{0,1,2,3}}, dimensions={0}").replace(
                    "@OUT@", 'backend_config={"estimated_cycles":"300"}')


def test_step_time_model_on_hand_written_hlo():
  est = tpu_model.estimate_step_time(HLO, V5E)
  clock, bw = V5E.clock_hz, V5E.collective_bytes_per_s
  loop = 12 * 1500 / clock  # the body once per trip; the condition has no cycle estimate
  gather = 0.75 * 4194304 * 4 / bw  # (n - 1)/n of the gathered array, sent once
  reduce = 2 * 0.75 * 1024 * 4 / bw  # an all-reduce sends twice that
  assert est.cycles == 12 * 1500 + 300
  assert est.by_class["matmul"] == pytest.approx(loop)
  assert est.by_class["elementwise"] == pytest.approx(300 / clock)
  # the all-gather overlaps the loop; only its remainder is exposed at the done
  assert gather > loop
  assert est.by_class["collective (exposed)"] == pytest.approx(gather - loop + reduce)
  assert est.collective_seconds == pytest.approx(gather + reduce)
  assert est.seconds == pytest.approx(loop + (gather - loop) + reduce + 300 / clock)
  assert est.unknown_trip_counts == 0
  assert est.by_op["while/body/blocks_*/dot_general"] == pytest.approx(loop)
  assert est.top_ops(1)[0] == ("all-gather", pytest.approx(gather - loop))
  # a longer loop hides the whole all-gather
  long = tpu_model.estimate_step_time(HLO.replace("constant(12)", "constant(400)"), V5E)
  assert long.by_class["collective (exposed)"] == pytest.approx(reduce)
  assert long.seconds == pytest.approx(400 * 1500 / clock + reduce + 300 / clock)


def test_unknown_trip_count_is_counted_once_and_reported():
  text = HLO.replace("ROOT %lt = pred[] compare(%ci, %n), direction=LT",
                     "ROOT %lt = pred[] custom-call(%ci, %n)")
  est = tpu_model.estimate_step_time(text, V5E)
  assert est.unknown_trip_counts == 1
  assert est.by_class["matmul"] == pytest.approx(1500 / V5E.clock_hz)


def test_search_candidates_chain_remat_per_sharding_and_scan():
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  groups = aot.candidate_configs(tiny_mae_config(), 256, ["1", "4", "16", "all", "3"],
                                 ["none", "full"], [False, True])
  labels = [[aot.setting(c) for c in chain] for chain in groups]
  assert len(groups) == 2 * 4  # scan x (data parallel, fsdp 4, 16, 256)
  assert labels[0] == ["data_parallel, remat=none, scan_layers=False",
                       "data_parallel, remat=full, scan_layers=False"]
  assert labels[3][0] == "fsdp(256), remat=none, scan_layers=False"
  assert labels[-1][-1] == "fsdp(256), remat=full, scan_layers=True"


def test_search_stops_each_remat_chain_at_its_first_fit_and_picks_the_fastest(monkeypatch):
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  pod = tpu_model.parse_topology("v5e:16x16")
  # (sharding, remat) -> (GiB per chip, estimated ms): data parallel fits only with full
  # remat, FSDP(4) without; FSDP(16) without remat is fastest but over the 90% line
  fake = {("data_parallel", "none"): (15.0, 30), ("data_parallel", "full"): (9.0, 40),
          ("fsdp(4)", "none"): (8.0, 35), ("fsdp(4)", "full"): (4.0, 45),
          ("fsdp(16)", "none"): (14.5, 20), ("fsdp(16)", "full"): (7.0, 38)}

  def compile_for_slice(config, topology, proxy):
    mode, remat = aot.setting(config).split(", ")[:2]
    total, ms = fake[(mode, remat[len("remat="):])]
    compiled = aot.Compiled(config, topology, topology)
    compiled.memory = tpu_model.Memory(0, 0, 0, int(total * GIB), 0)
    compiled.estimate = tpu_model.StepEstimate(seconds=ms / 1e3)
    return compiled

  monkeypatch.setattr(aot, "compile_for_slice", compile_for_slice)
  compiled = aot.search(tiny_mae_config(batch_size=256), pod, False, ["1", "4", "16"],
                        ["none", "full"], [False], log=lambda c: None)
  tried = [aot.setting(c.config).rsplit(",", 1)[0] for c in compiled]
  assert tried == ["data_parallel, remat=none", "data_parallel, remat=full",
                   "fsdp(4), remat=none", "fsdp(16), remat=none", "fsdp(16), remat=full"]
  chosen = aot.best(compiled)
  assert aot.setting(chosen.config).startswith("fsdp(4), remat=none")  # 35 < 38 < 40 ms
  assert aot.best(compiled[:1]) is None  # 15 GiB of 16: over the 10% headroom


def test_proxy_keeps_per_chip_batch_and_fsdp_groups():
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  pod = tpu_model.parse_topology("v5e:16x16")
  assert aot.proxy_topology(pod, 1).name == "v5e:2x2"  # data parallel: one host
  assert aot.proxy_topology(pod, 16).name == "v5e:4x8"  # two groups of 16
  assert aot.proxy_topology(pod, 256) == pod  # FSDP over all chips: no smaller slice
  assert aot.proxy_topology(tpu_model.parse_topology("v4:4x4x4"), 1).name == "v4:2x2x1"


def test_out_of_memory_errors_say_what_was_needed():
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  error = ("JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
           "required for HLO temporaries (18.26G) exceeds available HBM (15.75G).")
  assert aot.first_line(error) == "out of HBM: needs 18.26G of 15.75G"
  assert aot.first_line("ValueError: bad\nmore") == "ValueError: bad"


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                   reason="libtpu not installed (pip install -e '.[tpu]')")


@pytest.fixture(scope="module")
def tiny_v5e():
  """The tiny MAE step (batch 64, bf16) compiled for v5e:2x4 and on its proxy (2x2)."""
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  config = tiny_mae_config(batch_size=64)
  config.model.dtype = "bfloat16"
  slice8 = tpu_model.parse_topology("v5e:2x4")
  return (config, aot.compile_for_slice(config, slice8, proxy=False),
          aot.compile_for_slice(config, slice8, proxy=True))


@needs_libtpu
def test_tiny_train_step_compiles_for_v5e_and_the_proxy_matches_the_full_slice(tiny_v5e):
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  _, full, proxy = tiny_v5e
  assert full.error is None and proxy.error is None, (full.error, proxy.error)
  assert (full.compiled_on.name, proxy.compiled_on.name) == ("v5e:2x4", "v5e:2x2")
  # the same per-chip program; only the collectives' code differs (group sizes)
  assert proxy.memory == dataclasses.replace(full.memory, code=proxy.memory.code)
  assert proxy.memory.code == pytest.approx(full.memory.code, rel=0.01)
  assert proxy.step_flops == full.step_flops
  assert proxy.estimate.cycles == full.estimate.cycles
  assert proxy.estimate.seconds == pytest.approx(full.estimate.seconds, rel=0.02)
  assert full.fits and 0 < full.memory.total < 0.5 * GIB
  # no remat, no loop: XLA's count of the compiled step ~ the CPU-lowered model FLOPs (7%
  # apart at this size, where the optimizer and elementwise ops weigh; 0.4% at ViT-B)
  assert full.model_flops == pytest.approx(full.step_flops, rel=0.1)
  assert full.estimate.by_class["matmul"] > 0 and 0 < full.mfu < 1
  assert "fits with >= 10% headroom" in aot.report(full)
  assert full.images_per_s == pytest.approx(64 / full.estimate.seconds)


@needs_libtpu
def test_the_plan_marks_the_cheapest_and_fastest_slice_and_resumes_from_its_output(
    tiny_v5e, tmp_path, monkeypatch):
  from mim_jax.tools import aot, input_pipeline  # pylint: disable=import-outside-toplevel
  config, full, _ = tiny_v5e
  v5e = tpu_model.parse_topology("v5e:16x16")
  assert [t.name for t in aot.plan_slices(v5e, 32, 4096)] == [
      "v5e:4x8", "v5e:8x8", "v5e:8x16", "v5e:16x16"]
  assert [t.name for t in aot.plan_slices(v5e, 32, 96)] == ["v5e:4x8"]  # 96 % 64 != 0
  v5p = tpu_model.parse_topology("v5p:4x8x8")
  assert [t.num_chips for t in aot.plan_slices(v5p, 32, 4096)] == [32, 64, 128, 256]
  assert aot.run_images(config_file("mae.py", "vit_large"), 1281167) == 800 * 1281167
  # 4 chips 1.5x slower per step than 8: half the images/s per chip more, so cheaper
  slice4, slice16 = tpu_model.parse_topology("v5e:2x2"), tpu_model.parse_topology("v5e:4x4")
  slow = dataclasses.replace(full, topology=slice4, estimate=tpu_model.StepEstimate(
      seconds=1.5 * full.step_s))
  # the input decodes full.images_per_s / 180 images per CPU-second: the 8-chip host of
  # 2x4 needs 180 of its 224 vCPUs; 2x2 has half a host (112 vCPUs) for 4 chips that need
  # 4 x (images/s per chip = full's / 1.5 / 4) / rate = 120: input-bound
  rate = input_pipeline.InputRate(images=1000, wall_s=1.0, cpu_s=1000 * 180 / full.images_per_s,
                                  source="test JPEGs")
  assert rate.images_per_cpu_s == pytest.approx(full.images_per_s / 180)
  table = aot.plan_table(config, [(slice4, slow), (full.topology, full), (slice16, None)],
                         images=1e6, input_rate=rate)
  hours = 1e6 / full.images_per_s / 3600
  row = lambda name: next(line for line in table.splitlines() if line.startswith(f"| {name} "))
  assert row("v5e:2x2").endswith(
      f"| {1.5 * hours:,.1f} | {6 * hours:,.0f} | 120 of 112 | cheapest, input-bound |")
  assert row("v5e:2x4").endswith(f"| {hours:,.1f} | {8 * hours:,.0f} | 180 of 224 | fastest |")
  # v5e's MFU also calibrated on MaxText's measured runs (tpu_model.CALIBRATIONS)
  factor = tpu_model.CALIBRATIONS["v5e"].factor
  assert factor == pytest.approx(1.682, abs=1e-3)
  assert full.calibrated_mfu == pytest.approx(full.mfu * factor)
  assert (f"| {full.mfu:.1%} (calibrated {full.mfu * factor:.1%}) | "
          f"{full.images_per_s:,.0f} |") in row("v5e:2x4")
  assert "calibration: x1.68 (MaxText 16B and 32B on v5e-256" in aot.report(full)
  assert tpu_model.calibrated_mfu(0.3, CHIPS["v4"]) is None  # no measured v4 run
  assert row("v5e:4x4") == "| v5e:4x4 | 16 | 4 | searched | nothing fits |" + " — |" * 8
  assert "test JPEGs" in table
  # --output: a rerun reads a compiled setting back instead of compiling it
  output = tmp_path / "plan.jsonl"
  aot.Records(str(output)).save(full)
  monkeypatch.setattr(aot, "compile_lowered", lambda *a, **k: 1 / 0)
  again = aot.Records(str(output)).compile(config, full.topology)
  assert (again.memory, again.step_s, again.mfu, again.fits) == (
      full.memory, full.step_s, full.mfu, full.fits)
  assert again.estimate.top_ops(6) == full.estimate.top_ops(6)  # the report prints them
  other = config.copy_and_resolve_references()
  other.batch_size = 32
  with pytest.raises(ZeroDivisionError):  # another config is compiled, not read back
    aot.Records(str(output)).compile(other, full.topology)
  # the key is the lowered program, not the code around it: an edit that changes the
  # program (another attention) is compiled again, one that leaves it alone is not
  lowering = aot.lower_for_slice(config, full.topology)
  assert lowering.program_hash == full.program_hash
  real_attention = vit.attention_weights
  monkeypatch.setattr(vit, "attention_weights",  # new Python around the same program
                      lambda *args: real_attention(*args))
  assert aot.lower_for_slice(config, full.topology).program_hash == full.program_hash
  assert aot.Records(str(output)).compile(config, full.topology).step_s == full.step_s
  monkeypatch.setattr(vit, "attention_weights",
                      lambda *args: real_attention(*args) * 2.0)
  assert aot.lower_for_slice(config, full.topology).program_hash != full.program_hash
  with pytest.raises(ZeroDivisionError):
    aot.Records(str(output)).compile(config, full.topology)


@needs_libtpu
def test_compiled_scan_costs_its_body_times_the_trip_count():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  device = aot.topology_devices(tpu_model.parse_topology("v5e:2x2"))[:1]
  mesh = jax.sharding.Mesh(np.asarray(device), ("x",))
  spec = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16, sharding=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  step = lambda c, _: (jnp.tanh(c @ c), None)
  compiled = jax.jit(lambda x: jax.lax.scan(step, x, None, length=7)[0]).lower(spec).compile()
  text = compiled.as_text()
  computations, entry = tpu_model.parse_hlo(text)
  loop = next(i for i in computations[entry] if i.op == "while")
  body = sum(i.cycles or 0 for i in computations[loop.attribute("body")])
  outside = sum(i.cycles or 0 for i in computations[entry])
  assert body > 0
  assert tpu_model.estimate_step_time(text, V5E).cycles == 7 * body + outside


@needs_libtpu
def test_a_recipe_that_counts_its_dataset_compiles_without_the_dataset():
  from mim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  from conftest import shrunk_config  # pylint: disable=import-outside-toplevel
  # Latent MIM's regulariser goal needs the run's step count, which counts the dataset
  config = shrunk_config("latent_mim.py")
  config.data.update(source="tfds", tfds_name="imagenet2012", data_dir="/nonexistent")
  compiled = aot.compile_for_slice(config, tpu_model.parse_topology("v5e:2x2"))
  assert compiled.error is None, compiled.error
  assert compiled.estimate.seconds > 0 and compiled.model_flops > 0


@needs_libtpu
def test_evaluation_steps_compile_for_v5e_with_their_model_flops():
  """The streamed linear probe's step compiled for a TPU slice, like a pretraining step
  (fine-tuning's FLOPs against the probe's: tests/tools/test_compiled_step.py)."""
  from mim_jax.tools import aot, compiled_step  # pylint: disable=import-outside-toplevel
  pretrain = tiny_mae_config()
  pretrain.model.dtype = "bfloat16"
  slice4 = tpu_model.parse_topology("v5e:2x2")
  config = compiled_step.evaluation_config("linear_probe", pretrain)
  config.batch_size = 64
  probe = aot.compile_for_slice(config, slice4)
  assert probe.error is None, probe.error
  assert probe.config.model.dtype == "bfloat16"  # the pretraining config's speed options
  assert probe.fits and 0 < probe.mfu < 1
  assert probe.model_flops == pytest.approx(probe.step_flops, rel=0.1)  # no remat, no loop
  assert "linear_probe (mae) width=32" in aot.report(probe)
  assert aot.json_record(probe)["method"] == "linear_probe (mae)"
  table = aot.results_table([(config, probe), (config, None)], slice4)
  assert "| linear_probe (mae) 32w×2, patch 4 | 16 | 64 (16) | bfloat16 | data_parallel" in table
  assert "| searched | nothing fits |" in table and "v5e:2x2: 4 chips" in table
  assert all(line.count("|") == 13 for line in table.splitlines() if line.startswith("|"))