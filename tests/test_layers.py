"""The import graph keeps its layers: a module imports only modules of lower layers (no circle,
nothing upward), the library never imports the paper, and the command aliases import nothing."""

import ast
import pathlib

from conftest import REPO_ROOT

# Bottom to top. A module may import any module of a lower layer, none of its own or a higher one.
LAYERS = (
    ("errors", "faults", "features", "losses", "runtime"),
    ("extensions", "parallelism", "preemption", "reporting"),
    ("data.records",),
    ("data", "data.streaming"),
    ("models", "targets"),
    ("config_fields",),
    ("config_lib", "steps"),
    ("configs", "population"),
    ("rundir",),
    ("checkpointing",),
    ("runs", "inputs"),
    ("evaluation", "objective"),
    ("epochs",),
    ("trainer",),
    ("cli", "evaluate", "export", "plots"),
    ("api", "prepare"),
    ("", "benchmark", "distill", "pipeline", "train"),  # "": the package, kd_jax's front door.
    ("paper.figures", "paper.verdicts"),
    ("paper.bias_correction", "paper.power", "paper.specialist_lib"),
    ("paper.stages",),
    ("paper.fidelity", "paper.frontier", "paper.report"),
    ("paper.reproduce", "paper.specialists"),
)
# `python -m kd_jax.<alias>` runs a moved command by name (runpy); they import nothing.
ALIASES = ("data.prepare", "fidelity", "frontier", "reproduce", "specialists", "paper")
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}
KD_JAX = REPO_ROOT / "kd_jax"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(KD_JAX).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.AST) -> bool:
  """`if __name__ == "__main__":` — what a command imports to run, not what the module needs."""
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def kd_jax_imports(path: pathlib.Path) -> set[str]:
  """The kd_jax modules `path` imports, at module level or inside functions (names relative to
  kd_jax; '' is the package), leaving out its main guard."""
  imported, stack = set(), [ast.parse(path.read_text())]
  while stack:
    node = stack.pop()
    if _is_main_guard(node):
      continue
    if isinstance(node, ast.Import):
      imported |= {a.name for a in node.names if a.name.split(".")[0] == "kd_jax"}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kd_jax":
      for alias in node.names:  # `from kd_jax import data` names a module; `... import X` not.
        candidate = f"{node.module}.{alias.name}".removeprefix("kd_jax.")
        imported.add(f"{node.module}.{alias.name}" if candidate in LAYER else node.module)
    stack.extend(ast.iter_child_nodes(node))
  return {name.removeprefix("kd_jax").removeprefix(".") for name in imported}


def test_every_import_runs_down_the_layers():
  modules = {module_name(path): path for path in KD_JAX.rglob("*.py")}
  assert set(modules) == set(LAYER) - {"configs"} | set(ALIASES), (
      "a module was added or removed: place it in LAYERS (or ALIASES)")
  upward = [f"kd_jax.{name or '__init__'} imports kd_jax.{target} (layer {LAYER[target]} >= "
            f"{LAYER[name]})"
            for name, path in modules.items() if name not in ALIASES
            for target in sorted(kd_jax_imports(path)) if LAYER[target] >= LAYER[name]]
  assert not upward, "\n".join(upward)


def test_the_library_never_imports_the_paper_and_aliases_import_nothing():
  for name, path in ((module_name(p), p) for p in KD_JAX.rglob("*.py")):
    imports = kd_jax_imports(path)
    if name in ALIASES:
      assert not imports - {""}, (name, imports)
    elif not name.startswith("paper"):
      assert not any(target.startswith("paper") for target in imports), (name, imports)


def test_the_check_sees_an_upward_import(tmp_path):
  """The walk itself: an import in a function counts, one under the main guard does not."""
  module = tmp_path / "m.py"
  module.write_text("import os\nfrom kd_jax import errors\n\ndef f():\n  from kd_jax import trainer"
                    "\n\nif __name__ == '__main__':\n  from kd_jax import cli\n")
  assert kd_jax_imports(module) == {"errors", "trainer"}


def test_no_library_module_is_over_500_lines():
  """A module a maintainer can read in one sitting; more is a concept waiting for its owner."""
  long = {module_name(p): n for p in KD_JAX.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > 500}
  assert not long, long
