"""The package's layering, read from the source: no import cycle among mim_jax modules
(imports inside functions included), and a generic trainer that imports no method and no
evaluation module."""
import ast
import re

from conftest import REPO
from mim_jax import methods

PACKAGE = REPO / "mim_jax"


def module_name(path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules) -> set:
  """The mim_jax modules that the file at `path` imports anywhere in its body: for
  `from a.b import c`, a.b.c when that is a module, else a.b."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        child = f"{node.module}.{alias.name}"
        found.add(child if child in modules else node.module)
  return {name for name in found if name in modules}


def module_level_imports(path, modules) -> set:
  """The mim_jax modules the file at `path` imports when it is imported (statements of the
  module body, not those inside functions or `if __name__ == "__main__":`)."""
  body = ast.Module(body=[n for n in ast.parse(path.read_text()).body
                          if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
  found = set()
  for node in body.body:
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [f"{node.module}.{a.name}" for a in node.names] + [node.module])
    found.update(n for n in names if n in modules)
  return found


def flags_defined_on_import(path) -> set:
  """The absl flags that statements of the module body define: the names given to
  flags.DEFINE_* / config_flags.DEFINE_*, and `<f>()` for a call of a function `f` named
  define_flags (which defines several)."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    call = node.value if isinstance(node, ast.Expr) else None
    func = call.func if isinstance(call, ast.Call) else None
    name = getattr(func, "attr", None) or getattr(func, "id", None) or ""
    if name.startswith("DEFINE") and call.args and isinstance(call.args[0], ast.Constant):
      names.add(call.args[0].value)
    elif name == "define_flags":
      names.add(f"{ast.unparse(func)}()")
  return names


def import_graph() -> dict:
  files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  return {name: imports_of(path, files) - {name} for name, path in files.items()}


def find_cycle(graph: dict):
  """One import cycle as a list of modules, or None."""
  state = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt, path + [nxt])
        if cycle:
          return cycle
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [node])
      if cycle:
        return cycle
  return None


def test_the_walk_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
  graph = import_graph()
  assert "mim_jax.methods.base" in graph["mim_jax.methods.mae"]
  assert "mim_jax.evaluation.protocols" in graph["mim_jax.pretrain"]


def test_no_import_cycle_among_mim_jax_modules():
  assert find_cycle(import_graph()) is None


def test_the_trainer_imports_no_method_and_no_evaluation_module():
  graph = import_graph()
  trainer = [name for name in graph if name.startswith("mim_jax.training")]
  assert {"mim_jax.training.loop", "mim_jax.training.train_step"} <= set(trainer)
  imported = set().union(*(graph[name] for name in trainer))
  assert not {m for m in imported if m.startswith("mim_jax.evaluation")}, imported
  # the interface only (mim_jax/methods/base.py), no method and not the registry
  assert {m for m in imported if m.startswith("mim_jax.methods")} == {"mim_jax.methods.base"}


def test_the_library_imports_nothing_from_the_tools():
  graph = import_graph()
  library = [name for name in graph if not name.startswith("mim_jax.tools")]
  assert len(library) > 40 and len(graph) > len(library)
  for name in library:
    assert not {m for m in graph[name] if m.startswith("mim_jax.tools")}, name


def test_outside_methods_no_code_guesses_a_method_or_its_parameter_tree():
  """Readers reach a method only through its interface (Method.eval_encoder and friends)."""
  guesses = ['"encoder" in', "'encoder' in", "hasattr(method", "method.name ==",
             "method.name !=", "method.patch_gap", '.get("patch_gap"']
  by_name = re.compile(r"\bname\s*[!=]=\s*[\"'](%s)[\"']" % "|".join(methods.METHODS))
  for path in PACKAGE.rglob("*.py"):
    if path.is_relative_to(PACKAGE / "methods"):
      continue
    text = path.read_text()
    for guess in guesses:
      assert guess not in text, (path, guess)
    assert not by_name.search(text), (path, by_name.search(text))


def test_no_flag_is_defined_twice_in_a_test_process():
  """absl flags live in one process-wide registry, so two modules that define the same
  flag when imported cannot both be loaded ('The flag 'config' is defined twice', as when
  the pod planner imported the train-step benchmark and a test imported both it and
  mim_jax.main). Every module a pytest worker may load (the tests' imports anywhere in
  their files, followed through module-level imports) defines each flag at most once;
  the programs of mim_jax/tools define theirs under `__main__` (mim_jax.tools.compare,
  tools/aot.py, tools/profile_step.py)."""
  files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  loaded = set().union(*(imports_of(p, files) for p in (REPO / "tests").rglob("*.py")))
  todo = list(loaded)
  while todo:
    for name in module_level_imports(files[todo.pop()], files) - loaded:
      loaded.add(name)
      todo.append(name)
  assert {"mim_jax.main", "mim_jax.tools.compare", "mim_jax.tools.aot",
          "mim_jax.tools.profile_step"} <= loaded
  assert not {name for name in files if name.startswith("mim_jax.tools.")
              and flags_defined_on_import(files[name])}
  definers = {}
  for name in sorted(loaded):
    for flag in flags_defined_on_import(files[name]):
      definers.setdefault(flag, []).append(name)
  assert {f: m for f, m in definers.items() if len(m) > 1} == {}
  assert definers["config"] == ["mim_jax.main"]
