"""Measured results in docs/RESULTS.md, written by the tools that measure them.

Each tool owns one or more sections of the results document: the text between
`<!-- results:NAME -->` and `<!-- /results:NAME -->`, headed by the exact command line, the
machine (CPU model and cores, JAX backend and devices, jax version) and the date.
`write_section` replaces that section and keeps every other line of the file (writing the
same section twice gives the same file); a missing section is appended, a missing file is
created with a title. Tools take `--results=docs/RESULTS.md` (and `--results_section` to
keep several runs of one tool apart): `define_flags` where the tool defines its flags,
then `write_from_flags`.
"""
import datetime
import os
import platform
import re
import shlex
import shutil
import sys
from typing import Optional, Sequence

import jax
from absl import flags

TITLE = "# Measured results\n"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def command_line(module: str, argv: Optional[Sequence[str]] = None) -> str:
  """`python -m module ARGS` as the tool was run (ARGS: sys.argv[1:] by default)."""
  args = list(sys.argv[1:] if argv is None else argv)
  return shlex.join(["python", "-m", module] + args)


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> str:
  """One line: CPU model and core count, JAX backend with its devices, jax version."""
  devices = jax.devices()
  return (f"{cpu_model()}, {os.cpu_count()} cores; JAX {jax.default_backend()} backend, "
          f"{len(devices)} × {devices[0].device_kind}; jax {jax.__version__}")


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markers(name: str):
  if not _NAME.match(name):
    raise ValueError(f"Results section name {name!r}: use letters, digits, '_', '.', '-'.")
  return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


def section(name: str, title: str, body: str, command: str, machine_line: str,
            date: str) -> str:
  """The marked section: '## title', the command, machine and date, then `body`."""
  begin, end = markers(name)
  return (f"{begin}\n## {title}\n\n"
          f"Command: `{command}`  \nMachine: {machine_line}  \nDate: {date}\n\n"
          f"{body.strip()}\n{end}\n")


def replace_section(text: str, name: str, new_section: str) -> str:
  """`text` with section `name` replaced by `new_section` (appended when absent)."""
  begin, end = markers(name)
  start = text.find(begin)
  if start < 0:
    return text.rstrip("\n") + "\n\n" + new_section
  stop = text.find(end, start)
  if stop < 0:
    raise ValueError(f"The results document has {begin} without {end}: fix it by hand.")
  stop += len(end)
  if text[stop:stop + 1] == "\n":
    stop += 1
  return text[:start] + new_section + text[stop:]


def write_section(path: str, name: str, title: str, body: str, command: str,
                  machine_line: Optional[str] = None, date: Optional[str] = None) -> None:
  """Replace section `name` of the results document at `path` (created if absent)."""
  text = TITLE
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  new = section(name, title, body, command, machine() if machine_line is None else machine_line,
                now() if date is None else date)
  text = replace_section(text, name, new)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def copy_figure(source: str, results_path: str, name: str) -> str:
  """Copy the image `source` to figures/`name` beside the results document; returns the
  link to it relative to the document."""
  directory = os.path.join(os.path.dirname(os.path.abspath(results_path)), "figures")
  os.makedirs(directory, exist_ok=True)
  shutil.copyfile(source, os.path.join(directory, name))
  return f"figures/{name}"


def define_flags(default_section: str) -> None:
  """--results and --results_section (default `default_section`) of a tool."""
  flags.DEFINE_string("results", None, "Results document (e.g. docs/RESULTS.md) whose "
                      "section --results_section to replace with this run's figures, command, "
                      "machine and date (mim_jax/tools/results_doc.py).")
  flags.DEFINE_string("results_section", default_section, "Section of --results to replace; "
                      "another name keeps an earlier run's section.")


def requested_section() -> Optional[str]:
  """--results_section, checked, or None without --results."""
  if not flags.FLAGS.results:
    return None
  markers(flags.FLAGS.results_section)  # a bad name fails before the tool runs
  return flags.FLAGS.results_section


def write_from_flags(module: str, title: str, body: str) -> None:
  """With --results: replace its section --results_section with `body`, headed by
  `python -m module ARGS`, machine and date."""
  name = requested_section()
  if name is not None:
    write_section(flags.FLAGS.results, name, title, body, command_line(module))
