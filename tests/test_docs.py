"""The user's guides name only paths that exist: every repository path in README.md,
launch/README.md, notebooks/README.md and docs/RESULTS.md (config specs without their
`:variant`; patterns with <placeholders> or * skipped)."""
import re

import pytest

from conftest import REPO

DOCS = ("README.md", "launch/README.md", "notebooks/README.md", "docs/RESULTS.md")
TOP = ("mim_jax", "configs", "tests", "launch", "notebooks", "docs", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(re.escape(t) for t in TOP))


def named_paths(text):
  """Repository paths in `text`: a top-level folder, then path characters; a trailing
  ':variant' or '::test' is not part of the path."""
  for match in PATH.finditer(text):
    end = match.end()
    if text[end:end + 1] in "<*" and end < len(text):
      continue  # a pattern such as configs/<method>.py
    yield match.group(1)


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_guide_names_exists(doc):
  missing = sorted({p for p in named_paths((REPO / doc).read_text())
                    if not (REPO / p).exists()})
  assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_the_path_finder_reads_specs_and_skips_patterns():
  text = ("run `configs/mae.py:vit_base` and tests/test_lock.py::test_x; see "
          "configs/<method>.py, mim_jax/methods/*.py and docs/figures/a.png.")
  assert list(named_paths(text)) == ["configs/mae.py", "tests/test_lock.py",
                                     "docs/figures/a.png"]


def layout_entries():
  """(top-level entries, entries under mim_jax/) of README.md's Layout tree: a path at
  the start of each line of its code block, indented two spaces under mim_jax/."""
  text = (REPO / "README.md").read_text()
  block = text[text.index("## Layout"):].split("```")[1]
  lines = [line for line in block.splitlines() if line.strip()]
  top = [line.split()[0] for line in lines if not line.startswith(" ")]
  inner = [line.split()[0] for line in lines if line.startswith("  ")]
  return top, inner


def test_the_readme_layout_matches_the_tree():
  top, inner = layout_entries()
  assert top[0] == "mim_jax/" and all((REPO / entry).exists() for entry in top)
  package = REPO / "mim_jax"
  files = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
           if p.name != "__init__.py" and not p.name.startswith((".", "__pycache__"))}
  assert sorted(inner) == sorted(files)
