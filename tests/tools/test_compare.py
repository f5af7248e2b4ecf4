"""The comparison tool end to end on a tiny npz set with two tiny variants; its budget
arithmetic and schedule scaling by hand."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from conftest import REPO, config_file, scalar_series, shrunk_config
from mim_jax.tools import compare, compiled_step
from mim_jax.training import config as train_config

BUDGET = compare.BUDGET_FILE

# Two tiny variants: configs/<method>.py's recipe shrunk, without image summaries.
TINY_VARIANTS_FILE = f'''
from mim_jax import config_files


def get_config(arg):
  config = config_files.load("{REPO}/configs/" + arg + ".py:vit_base,shrink")
  config.image_summary_every_steps = 0
  return config
'''
# k-NN on both pooled features (--pools) and the attentive probe on tokens (the linear
# probe takes the same path as k-NN here); CPU-sized probe settings.
PROTOCOLS = ["knn", "attentive_probe"]
POOLS = ["cls", "mean"]
LABELS = ["knn_cls", "knn_mean", "attentive_probe"]
PROTOCOL_OVERRIDES = ["eval_batch_size=32", "attentive_probe.epochs=1",
                      "attentive_probe.batch_size=16", "attentive_probe.warmup_epochs=0.0",
                      "knn:knn.k=5"]


def write_npz(path, num_train=64, num_test=32, size=16, classes=4):
  """uint8 images whose mean colour depends on the label, and the labels."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", num_train), ("test", num_test)):
    labels = np.arange(n) % classes
    images = rng.integers(0, 96, (n, size, size, 3)) + 40 * labels[:, None, None, None]
    arrays[f"x_{split}"], arrays[f"y_{split}"] = images.astype(np.uint8), labels
  np.savez(path, **arrays)


def compare_args(root):
  """compare.compare's arguments for the two tiny variants on the tiny npz set."""
  variants = [f"{root / 'tiny_variants.py'}:mae", f"{root / 'tiny_variants.py'}:pcae"]
  return dict(specs=variants, workdir=str(root / "work"), budget="steps:4",
              data_overrides=["source=npz", f"path={root / 'tiny.npz'}"],
              protocol_names=PROTOCOLS, eval_overrides=PROTOCOL_OVERRIDES, pools=POOLS,
              num_checkpoints=1)


def command_line(args, results_doc):
  """The same comparison as `python -m mim_jax.tools.compare` flags."""
  return ([f"--configs={','.join(args['specs'])}", f"--workdir={args['workdir']}",
           f"--budget={args['budget']}", f"--num_checkpoints={args['num_checkpoints']}",
           f"--protocols={','.join(args['protocol_names'])}", f"--results={results_doc}",
           f"--pools={','.join(args['pools'])}"] +
          [f"--data={d}" for d in args["data_overrides"]] +
          [f"--eval_override={o}" for o in args["eval_overrides"]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("compare")
  write_npz(root / "tiny.npz")
  (root / "tiny_variants.py").write_text(TINY_VARIANTS_FILE)
  args = compare_args(root)
  report = compare.compare(**args, command="python -m mim_jax.tools.compare (the test)")
  return root, args, report


def test_the_table_holds_the_eval_workdirs_numbers_and_the_budget_arithmetic(setup):
  root, _, _ = setup
  report = json.loads((root / "work" / "comparison.json").read_text())
  assert [v["method"] for v in report["variants"]] == ["mae", "pcae"]
  labels = LABELS
  assert [p["label"] for p in report["protocols"]] == labels
  assert [p["overrides"][-1] for p in report["protocols"][:2]] == ["pool=cls", "pool=mean"]
  for variant in report["variants"]:
    budget_steps = variant["budget_steps"]
    # 64 train images // batch 16 = 4 steps per epoch, from the data
    assert (budget_steps["steps"], budget_steps["num_examples"],
            budget_steps["steps_per_epoch"]) == (4, 64, 4)
    assert budget_steps["checkpoint_steps"] == [0, 4] and budget_steps["flops_per_step"] > 0
    steps = [row["step"] for row in variant["checkpoints"]]
    assert steps == [0, 4]
    assert [row["epochs"] for row in variant["checkpoints"]] == [0.0, 1.0]
    assert [row["flops"] for row in variant["checkpoints"]] == [
        s * budget_steps["flops_per_step"] for s in steps]
    for row in variant["checkpoints"]:
      for protocol in report["protocols"]:
        metrics = json.loads(
            open(os.path.join(row["eval_dirs"][protocol["label"]], "metrics.json")).read())
        assert metrics["pretrained_step"] == row["step"]
        # step 0, the random init both variants share, was evaluated on the first one's
        first = report["variants"][0] if row["step"] == 0 else variant
        assert metrics["pretrained"] == os.path.join(first["workdir"], "pretrain")
        assert metrics[protocol["top1_key"]] == row["top1"][protocol["label"]]
        assert (metrics["num_train"], metrics["num_test"], metrics["num_classes"]) == (64, 32, 4)
        assert metrics["pool"] == {"knn_cls": "cls", "knn_mean": "mean",
                                   "attentive_probe": "tokens"}[protocol["label"]]
        if metrics["pool"] != "tokens":  # the pooled test features' collapse diagnostics
          assert row["features"][metrics["pool"]] == {
              "effective_rank": metrics["test_effective_rank"],
              "mean_cosine": metrics["test_mean_cosine"]}
    assert sorted(variant["checkpoints"][-1]["features"]) == ["cls", "mean"]
    # wall time: Σ step_time × steps of its log interval (logged every step; step 1, which
    # compiles, has none and takes step 2's)
    times = dict(scalar_series(os.path.join(variant["workdir"], "pretrain"), "step_time",
                               with_steps=True))
    assert sorted(times) == [2, 3, 4]
    walls = [row["wall_seconds"] for row in variant["checkpoints"]]
    assert walls == pytest.approx([0.0, 2 * times[2] + times[3] + times[4]])
  # MAE's and PCAE's recipes initialise the same encoder: one evaluation of step 0
  zeros = [v["checkpoints"][0] for v in report["variants"]]
  assert zeros[0]["eval_dirs"] == zeros[1]["eval_dirs"]
  assert all(d.startswith(str(root / "work" / "random_init")) for d in
             zeros[0]["eval_dirs"].values())
  (group,) = report["raw_pixels"]
  assert group["variants"] == ["tiny_variants_mae", "tiny_variants_pcae"]
  assert group["eval_dirs"]["knn_cls"] == group["eval_dirs"]["knn_mean"]  # pixels: no pool
  for label, shape in zip(("knn_cls", "attentive_probe"), ([768], [16, 48])):
    metrics = json.loads(open(os.path.join(group["eval_dirs"][label], "metrics.json")).read())
    assert metrics["feature_shape"] == shape and metrics["num_classes"] == 4
    assert metrics["top1" if label == "attentive_probe" else "knn_top1"] == group["top1"][label]
  knn = json.loads(open(os.path.join(group["eval_dirs"]["knn_cls"], "config.json")).read())
  assert knn["eval"]["knn"]["k"] == 5  # the knn-only override
  table = (root / "work" / "comparison.md").read_text()
  final = report["variants"][1]["checkpoints"][-1]
  assert (f"| tiny_variants_pcae | pcae | 4 | 1.00 | {final['flops']:.3g} | "
          f"{final['wall_seconds']:.3g} | " + " | ".join(
              f"{final['top1'][k]:.1f}" for k in labels) + " |") in table
  assert "| raw pixels (16 px) |" in table
  cls, mean = (final["features"][p] for p in ("cls", "mean"))
  assert (f"| tiny_variants_pcae | 4 | {cls['effective_rank']:.1f} / {cls['mean_cosine']:.2f} "
          f"| {mean['effective_rank']:.1f} / {mean['mean_cosine']:.2f} |") in table
  zero = report["variants"][0]["checkpoints"][0]
  assert ("| random init (tiny_variants_mae, tiny_variants_pcae) | mae, pcae | 0 | 0 | 0 | 0 | "
          + " | ".join(f"{zero['top1'][k]:.1f}" for k in labels) + " |") in table


def test_the_plots_exist(setup):
  root, _, _ = setup
  for name in ("top1_vs_flops.png", "top1_vs_wall_time.png"):
    path = root / "work" / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_command_line_rerun_redoes_nothing_and_replaces_its_results_section(setup):
  root, args, report = setup
  work = root / "work"
  metrics = sorted(work.rglob("metrics.json"))
  # variants × step 4 × protocols, the shared step 0 × protocols, raw pixels (k-NN once)
  assert len(metrics) == 2 * 3 + 3 + 2
  outputs = sorted(work.rglob("events.out.tfevents.*")) + sorted(work.rglob("checkpoints/*"))
  before = {p: p.stat().st_mtime_ns for p in metrics + outputs}
  doc = root / "docs" / "RESULTS.md"
  doc.parent.mkdir()
  other = "# Measured results\n\n<!-- results:other -->\nkept\n<!-- /results:other -->\n"
  doc.write_text(other)
  cmd = [sys.executable, "-m", "mim_jax.tools.compare"] + command_line(args, doc)
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  # no pretraining (it writes event files and checkpoints) and no evaluation
  assert sorted(work.rglob("events.out.tfevents.*")) + sorted(
      work.rglob("checkpoints/*")) == outputs
  assert {p: p.stat().st_mtime_ns for p in metrics + outputs} == before
  again = json.loads((work / "comparison.json").read_text())
  assert again["variants"] == report["variants"] and again["raw_pixels"] == report["raw_pixels"]
  text = doc.read_text()
  assert text.startswith(other + "\n<!-- results:compare -->\n## Pretraining comparison\n")
  assert text.count("<!-- results:compare -->") == 1 and "--budget=steps:4" in text
  assert "| tiny_variants_mae | mae | 4 | 1.00 |" in text
  for name in ("top1_vs_flops.png", "top1_vs_wall_time.png"):
    assert f"](figures/compare_{name})" in text
    assert (doc.parent / "figures" / f"compare_{name}").read_bytes() == (
        work / name).read_bytes()


def test_a_study_kept_without_its_checkpoints_is_tabulated_again_elsewhere(setup, tmp_path):
  """The files the module docstring names, copied to another workdir, give the same rows
  with no pretraining and no evaluation; other protocols need the checkpoints again."""
  root, args, report = setup
  work, kept = root / "work", tmp_path / "kept"
  files = [work / "raw_pixels"] + [work / v["name"] / name for v in report["variants"]
                                   for name in (BUDGET, compare.ROW_FILE)]
  for path in files:
    target = kept / path.relative_to(work)
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
  again = compare.compare(**dict(args, workdir=str(kept)))
  assert again["variants"] == report["variants"] and again["raw_pixels"] != []
  assert [g["top1"] for g in again["raw_pixels"]] == [g["top1"] for g in report["raw_pixels"]]
  assert not list(kept.rglob("checkpoints")) and not list(kept.rglob("eval"))
  assert "| tiny_variants_mae | mae | 4 | 1.00 |" in (kept / "comparison.md").read_text()
  assert "64 train / 32 test images, 4 classes" in (kept / "comparison.md").read_text()
  variant = compare.load_variants(args["specs"][:1], args["data_overrides"], str(kept))[0]
  budget_steps = json.loads((kept / variant.name / BUDGET).read_text())
  protocols = compare.load_protocols(PROTOCOLS, PROTOCOL_OVERRIDES, [variant], POOLS)
  assert compare.recorded_row(variant, budget_steps, protocols, "ends") == report["variants"][0]
  for other, streamed_at in ((protocols[:2], "ends"), (protocols, "all")):
    assert compare.recorded_row(variant, budget_steps, other, streamed_at) is None


def test_a_row_recorded_elsewhere_shares_the_random_init_of_its_new_workdir():
  """One random-init row for two variants whose step 0 is the same evaluation, although
  one's row was recorded under the workdir the study ran in before; another gets its own."""
  def variant(name, workdir, key):
    zero = {"eval_dirs": {"knn": f"{workdir}/random_init/knn-1/{key}"}, "top1": {"knn": 1.0}}
    return {"name": name, "method": name, "workdir": f"{workdir}/{name}", "checkpoints": [zero]}

  report = {"variants": [variant("mae", "/old/study", "a"), variant("pcae", "/new", "a"),
                         variant("simmim", "/new", "b")]}
  assert [g["variants"] for g in compare.random_inits(report)] == [["mae", "pcae"], ["simmim"]]


def synthetic_report(methods_rows):
  """A comparison.json-like report: k-NN on two pools, a linear probe and fine-tuning;
  `methods_rows`: (method, FLOPs per step, top-1 rows per checkpoint)."""
  columns = [("knn_cls", "knn"), ("knn_mean", "knn"), ("linear_probe", "linear_probe"),
             ("finetune", "finetune")]
  labels = [label for label, _ in columns]
  protocols = [{"label": label, "protocol": protocol} for label, protocol in columns]
  variants = [{"name": f"{method}_cifar", "method": method,
               "budget_steps": {"flops_per_step": flops},
               "checkpoints": [{"step": 10 * i, "top1": dict(zip(labels, top1))}
                               for i, top1 in enumerate(rows)]}
              for method, flops, rows in methods_rows]
  return {"protocols": protocols, "variants": variants}


def test_margins_over_the_random_init_and_the_papers_directions_by_hand():
  """Each column's gain over step 0 (first → last; fine-tuning ran once), and the
  directions Multi-View MAE, PCAE and CAE declare against MAE, checked on hand figures."""
  report = synthetic_report([
      ("mae", 2e9, [(28.0, 29.0, 45.0, 40.0), (30.0, 29.5, 46.0, None),
                    (33.5, 32.0, 48.0, 44.5)]),
      ("multiview_mae", 4e9, [(28.0, 29.0, 45.0, 40.0), (31.0, 36.0, 50.0, 44.0)]),
      ("pcae", 1e9, [(28.0, 29.0, 45.0, 40.0), (30.0, 30.0, 47.0, 44.0)]),
      ("cae", 2.5e9, [(28.0, 29.0, 45.0, 40.0), (29.0, 28.0, 47.0, None)])])
  margins = compare.margins_table(report)
  assert margins[-4] == "| mae_cifar | +2.0 → +5.5 | +0.5 → +3.0 | +1.0 → +3.0 | +4.5 |"
  assert margins[-1] == "| cae_cifar | +1.0 | -1.0 | +2.0 | — |"
  claims = compare.claims_table(report)
  rows = [line for line in claims if line.startswith("| multiview_mae") or
          line.startswith("| pcae") or line.startswith("| cae")]
  assert [row.rsplit("|", 2)[-2].strip() for row in rows] == ["yes", "yes", "no", "no"]
  assert "linear probe 50.0 (linear_probe) against 48.0 (linear_probe)" in rows[0]
  assert "k-NN 36.0 (knn_mean) against 33.5 (knn_cls)" in rows[1]
  assert "1e+09 FLOPs per step against 2e+09 (0.50×); fine-tuning 44.0" in rows[2]
  alone = synthetic_report([("cae", 2.5e9, [(28.0, 29.0, 45.0, 40.0), (29.0, 28.0, 47.0, 41.0)])])
  assert compare.claims_table(alone)[-1].endswith("| no mae variant in this study | — |")
  assert compare.claims_table(synthetic_report([("mae", 2e9, [(1, 1, 1, 1)] * 2)])) == []


def test_a_rerun_with_another_budget_or_data_is_refused(setup):
  root, args, _ = setup
  for changed in (dict(budget="steps:6"),
                  dict(data_overrides=args["data_overrides"] + ["flip=False"])):
    with pytest.raises(app.UsageError, match="holds the budget for"):
      compare.compare(**dict(args, **changed))


def test_fine_tuning_runs_from_the_shared_random_init_once_and_from_the_last_checkpoint(
    setup, tmp_path, monkeypatch):
  """A streamed protocol (configs/eval/finetune.py:cifar; --pools leave its pool alone) runs
  from step 0, training from scratch, once for the two variants that share it, and from
  the last checkpoint (--streamed_at=ends), or from every one (all); run.evaluate stubbed."""
  root, args, _ = setup
  variants = compare.load_variants(args["specs"], args["data_overrides"], str(root / "work"))
  (finetune,) = compare.load_protocols(["configs/eval/finetune.py:cifar"], [], variants,
                                       POOLS)
  assert (finetune.label, finetune.config.pool, finetune.top1) == ("finetune_cifar", None,
                                                                     "top1")
  calls = []

  def evaluate(config, directory, token_cache):
    calls.append((os.path.basename(os.path.dirname(config.pretrained)),
                  config.pretrained_step, directory))
    metrics = {"top1": float(len(calls))}
    os.makedirs(directory)
    with open(os.path.join(directory, "metrics.json"), "w") as f:
      json.dump(metrics, f)
    return metrics

  monkeypatch.setattr(compare.run, "evaluate", evaluate)
  budget = json.loads((root / "work" / "tiny_variants_mae" / BUDGET).read_text())
  budget["checkpoint_steps"] = [0, 2, 4]
  rows = [compare.evaluate_variant(v, budget, [finetune], str(tmp_path), "ends")["checkpoints"]
          for v in variants]
  shared = calls[0][2]
  assert shared.startswith(str(tmp_path / "random_init" / finetune.key))
  assert [c[:2] for c in calls] == [("tiny_variants_mae", 0), ("tiny_variants_mae", 4),
                                    ("tiny_variants_pcae", 4)]
  assert [[r["top1"]["finetune_cifar"] for r in v] for v in rows] == [[1, None, 2],
                                                                       [1, None, 3]]
  assert rows[1][0]["eval_dirs"]["finetune_cifar"] == shared
  compare.evaluate_variant(variants[0], budget, [finetune], str(tmp_path), "all")
  assert [c[:2] for c in calls[3:]] == [("tiny_variants_mae", 2)]


def test_flops_and_cpu_budgets_convert_with_the_measured_step(setup, monkeypatch):
  root, args, _ = setup
  (variant,) = compare.load_variants(args["specs"][:1], args["data_overrides"],
                                     str(root / "budgets"))
  done = json.loads((root / "work" / "tiny_variants_mae" / "budget_steps.json").read_text())
  cpu = compare.convert_budget(variant, compare.Budget.parse("cpu_seconds:1000"), 2, 2)
  assert cpu["flops_per_step"] == done["flops_per_step"]  # the same compiled step
  assert cpu["steps"] == math.floor(1000 / cpu["cpu_seconds_per_step"]) > 0
  assert "time.process_time" in cpu["how"]

  class Step:  # XLA counts per device: 1e6 FLOPs on each of the 8
    step_flops = 1e6

    def __init__(self, config, count_model_flops):
      del config, count_model_flops

  monkeypatch.setattr(compiled_step, "CompiledStep", Step)
  flops = compare.convert_budget(variant, compare.Budget.parse("flops:2.5e7"), 2, 2)
  assert (flops["flops_per_step"], flops["steps"]) == (8e6, 3)  # floor(2.5e7 / 8e6)
  assert flops["checkpoint_steps"] == [0, 2, 3]


def test_budget_arithmetic_and_checkpoint_steps_by_hand():
  assert compare.Budget.parse("flops:1e12") == compare.Budget("flops", 1e12, "flops:1e12")
  for bad in ("steps:1.5", "weeks:2", "epochs:-1", "epochs", None):
    with pytest.raises(app.UsageError, match="--budget"):
      compare.Budget.parse(bad)
  steps = lambda text: compare.Budget.parse(text).steps(
      steps_per_epoch=78, flops_per_step=3e9, cpu_seconds_per_step=0.8)
  assert steps("steps:200") == 200
  assert steps("epochs:2.5") == 195  # round(2.5 × 78)
  assert steps("flops:1e12") == 333  # floor(1e12 / 3e9)
  assert steps("cpu_seconds:480") == 600  # floor(480 / 0.8)
  assert compare.checkpoint_steps(10, 4) == [0, 3, 6, 9, 10]
  assert compare.checkpoint_steps(9, 4) == [0, 3, 6, 9]
  assert compare.checkpoint_steps(3, 5) == [0, 1, 2, 3]


def test_the_schedule_keeps_its_shape_at_the_budget():
  simmim = shrunk_config("simmim.py", **{  # 400 steps, warmup 40, ×0.1 at step 350
      "num_train_steps": 400, "warmup_steps": 40, "optimizer.decay_steps": (350,)})
  config = compare.scheduled_config(simmim, 200, 4)
  assert (config.num_train_steps, config.warmup_steps) == (200, 20)
  assert tuple(config.optimizer.decay_steps) == (175,)
  assert (config.checkpoint_every_steps, config.keep_checkpoints) == (50, 201)
  by_epochs = config_file("quickstart.py", overrides={
      "num_train_steps": -1, "num_epochs": 10.0, "warmup_steps": -1, "warmup_epochs": 1.0})
  assert train_config.schedule(by_epochs)[:3] == (1560, 156, 156)  # 10k synthetic // 64
  config = compare.scheduled_config(by_epochs, 100, 3)
  assert (config.num_train_steps, config.warmup_steps, config.checkpoint_every_steps) == (
      100, 10, 34)


def test_bad_input_fails_before_anything_is_written(tmp_path):
  quickstart = str(REPO / "configs" / "quickstart.py")
  cases = [
      (dict(budget="steps:0"), "--budget"),
      (dict(data_overrides=["image_size=64"]), "image_size"),
      (dict(data_overrides=["colour=red"]), "no such field"),
      (dict(eval_overrides=["svm:k=3"]), "no protocol"),
      (dict(eval_overrides=["linear_probe.nope=3"]), "no such field"),
      (dict(eval_overrides=["pool=mean"]), "attentive_probe pool"),
      (dict(eval_overrides=["eval_batch_size=12"]), "knn eval_batch_size"),
      (dict(specs=[quickstart, quickstart]), "same name"),
      (dict(budget="epochs:0.001"), "buys no training step"),
  ]
  for overrides, message in cases:
    kwargs = dict(specs=[quickstart], budget="steps:2", data_overrides=[], eval_overrides=[])
    kwargs.update(overrides)
    with pytest.raises((app.UsageError, ValueError), match=message):
      compare.compare(kwargs.pop("specs"), str(tmp_path / "work"), kwargs.pop("budget"),
                      **kwargs)
  assert not (tmp_path / "work").exists()


def test_the_published_linear_probe_gives_way_to_its_small_data_variant(tmp_path):
  """On 10k synthetic images the streamed probe's batch of 16384 exceeds the training set:
  compare picks configs/eval/linear_probe.py:cifar and says why; overrides it has a field
  for carry over, the others are named. With a million images it keeps the published one."""
  quickstart = str(REPO / "configs" / "quickstart.py")
  variants = compare.load_variants([quickstart], [], str(tmp_path))
  overrides = ["linear_probe:eval_batch_size=64", "linear_probe:warmup_epochs=5"]
  probe, knn = compare.load_protocols(["linear_probe", "knn"], overrides, variants)
  assert (probe.spec, probe.label) == ("configs/eval/linear_probe.py:cifar",
                                       "linear_probe_cifar")
  assert probe.config.features == "precomputed" and probe.config.eval_batch_size == 64
  assert probe.overrides == ["eval_batch_size=64"]
  assert probe.picked.startswith("picked instead of configs/eval/linear_probe.py for this "
                                 "data: The probe's batch of 16384 exceeds the 10000 training")
  assert "overrides it has no field for: warmup_epochs=5" in probe.picked
  assert knn.picked == ""
  large = compare.load_variants([quickstart], ["synthetic_train_size=1000000"], str(tmp_path))
  (kept,) = compare.load_protocols(["linear_probe"], [], large)
  assert kept.spec == "configs/eval/linear_probe.py" and kept.config.features == "streamed"


def test_overrides_are_parsed_as_ml_collections_parses_config_flags(tmp_path):
  quickstart = str(REPO / "configs" / "quickstart.py")
  (variant,) = compare.load_variants(
      [quickstart], ["flip=false", "source=npz", "path=../x.npz", "crop_scale=(0.5, 1.0)"],
      str(tmp_path))
  data = variant.config.data
  assert (data.flip, data.source, data.path, tuple(data.crop_scale)) == (
      False, "npz", "../x.npz", (0.5, 1.0))
  for bad in ("flip=maybe", "synthetic_train_size=1.5", "flip"):
    with pytest.raises(app.UsageError, match="--data"):
      compare.load_variants([quickstart], [bad], str(tmp_path))


def test_a_workdir_from_before_the_rename_resumes_from_its_plan_json(tmp_path):
  quickstart = str(REPO / "configs" / "quickstart.py")
  (variant,) = compare.load_variants([quickstart], [], str(tmp_path))
  budget = compare.Budget.parse("steps:3")
  written = dict(compare.budget_key(variant, budget, 2), steps=3)
  os.makedirs(variant.workdir)
  with open(os.path.join(variant.workdir, "plan.json"), "w") as f:
    json.dump(written, f)
  assert compare.read_budget_steps(variant, budget, 2) == written
  with pytest.raises(app.UsageError, match="holds the budget for"):
    compare.read_budget_steps(variant, budget, 3)


def test_a_run_made_before_a_field_existed_continues_when_it_is_at_its_default(
    setup, tmp_path):
  """A workdir of an older mim_jax, whose configs lacked optimizer.mu_dtype: its recorded
  config has no such field and its budget another config hash. At the default (float32)
  the run is the same and continues; set to bfloat16 it is another run, refused."""
  root, args, _ = setup
  (variant,) = compare.load_variants(args["specs"][:1], args["data_overrides"],
                                     str(root / "work"))
  old = compare.Variant(variant.spec, variant.name, variant.config, str(tmp_path / "old"))
  os.makedirs(old.pretrain_dir)
  budget_steps = json.loads(open(variant.budget_path).read())
  recorded = json.loads(open(os.path.join(variant.pretrain_dir, "config.json")).read())
  del recorded["optimizer"]["mu_dtype"]
  with open(os.path.join(old.pretrain_dir, "config.json"), "w") as f:
    json.dump(recorded, f)
  with open(old.budget_path, "w") as f:
    json.dump(dict(budget_steps, config_hash="0ldc0de0"), f)
  budget = compare.Budget.parse(args["budget"])
  assert compare.read_budget_steps(old, budget, args["num_checkpoints"]) == dict(
      budget_steps, config_hash="0ldc0de0")
  changed = old.config.copy_and_resolve_references()
  changed.optimizer.mu_dtype = "bfloat16"
  with pytest.raises(app.UsageError, match="holds the budget for"):
    compare.read_budget_steps(compare.Variant(old.spec, old.name, changed, old.workdir),
                              budget, args["num_checkpoints"])
