"""docs/RESULTS.md sections written by the measuring tools (mim_jax/tools/results_doc.py)."""
import pytest

from mim_jax.tools import results_doc

OTHER = "<!-- results:tpu_compile -->\n## TPU compile\n\n| a |\n<!-- /results:tpu_compile -->\n"


def write(path, body, name="compare"):
  results_doc.write_section(str(path), name, "Comparison", body, "python -m tool --x=1",
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
    results_doc.markers("a b")
  path = tmp_path / "RESULTS.md"
  path.write_text("<!-- results:compare -->\nno end\n")
  with pytest.raises(ValueError, match="without"):
    write(path, "x")
  assert path.read_text() == "<!-- results:compare -->\nno end\n"


def test_the_command_line_and_machine_line():
  assert results_doc.command_line("mim_jax.tools.compare",
                                  ["--budget=steps:4", "--data=path=a b"]) == (
      "python -m mim_jax.tools.compare --budget=steps:4 '--data=path=a b'")
  line = results_doc.machine()
  assert "cores" in line and "jax " in line and "cpu" in line

