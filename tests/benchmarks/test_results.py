"""docs/RESULTS.md sections written by the measuring tools (mim_jax/benchmarks/results.py)."""
import pytest

from mim_jax.benchmarks import results

OTHER = "<!-- results:tpu_compile -->\n## TPU compile\n\n| a |\n<!-- /results:tpu_compile -->\n"


def write(path, body, name="compare"):
  results.write_section(str(path), name, "Comparison", body, "python -m tool --x=1",
                        machine_line="CPU X, 2 cores", date="2026-12-01 10:00 UTC")


def test_a_section_is_created_replaced_in_place_and_others_are_kept(tmp_path):
  path = tmp_path / "docs" / "RESULTS.md"
  write(path, "first")
  created = path.read_text()
  assert created == ("# Measured results\n\n<!-- results:compare -->\n## Comparison\n\n"
                     "Command: `python -m tool --x=1`  \nMachine: CPU X, 2 cores  \n"
                     "Date: 2026-12-01 10:00 UTC\n\nfirst\n<!-- /results:compare -->\n")
  path.write_text("# Measured results\n\nIntro.\n\n" + OTHER + "\n" +
                  created.split("\n\n", 1)[1] + "\nTrailing text.\n")
  write(path, "second\n\n| table |")
  text = path.read_text()
  assert text.startswith("# Measured results\n\nIntro.\n\n" + OTHER + "\n<!-- results:compare")
  assert text.endswith("| table |\n<!-- /results:compare -->\n\nTrailing text.\n")
  assert "first" not in text and text.count("<!-- results:compare -->") == 1
  write(path, "second\n\n| table |")
  assert path.read_text() == text  # idempotent
  write(path, "collapse figures", name="latent_mim_collapse")
  assert path.read_text().startswith(text.rstrip("\n") + "\n\n<!-- results:latent_mim_collapse")


def test_bad_names_and_broken_markers_are_errors(tmp_path):
  with pytest.raises(ValueError, match="section name"):
    results.markers("a b")
  path = tmp_path / "RESULTS.md"
  path.write_text("<!-- results:compare -->\nno end\n")
  with pytest.raises(ValueError, match="without"):
    write(path, "x")
  assert path.read_text() == "<!-- results:compare -->\nno end\n"


def test_the_command_line_and_machine_line():
  assert results.command_line("mim_jax.compare", ["--budget=steps:4", "--data=path=a b"]) == (
      "python -m mim_jax.compare --budget=steps:4 '--data=path=a b'")
  line = results.machine()
  assert "cores" in line and "jax " in line and "cpu" in line


def test_the_train_step_benchmark_tabulates_its_summary():
  from conftest import config_file
  from mim_jax.benchmarks import compiled_step
  config = config_file("quickstart.py")
  summary = dict(compile_s=8.04, step_s=0.04353, images_per_s=183.8,
                 model_gflops_per_image=0.2318, step_gflops_per_image=0.2318, mfu=0.4123)
  table = compiled_step.results_table([(config, summary)], steps=5)
  assert ("| mae 192w×12, patch 4 | 32 | 64 | float32 / none / False / xla | 8 × cpu | 8.0 | "
          "0.04353 | 184 | 0.232 | 0.232 | 41.2% |") in table
  assert table.endswith("Median of 5 timed steps after one warm-up step.\n")
