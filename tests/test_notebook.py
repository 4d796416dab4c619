"""The Colab notebook stays valid Python and uses only names the package really exports.

(Executing it takes a minute of pre-training; CI checks that it parses and that its imports resolve.)
"""
import ast
import importlib
import importlib.util
import json
import pathlib

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "maskfeat_colab.ipynb"


def _code_cells():
  nb = json.loads(NOTEBOOK.read_text())
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_cells_parse():
  cells = _code_cells()
  assert len(cells) >= 5
  for i, src in enumerate(cells):
    compile(src, f"{NOTEBOOK.name}[cell {i}]", "exec")


def test_notebook_package_imports_resolve():
  for src in _code_cells():
    for node in ast.walk(ast.parse(src)):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maskfeat_jax"):
        mod = importlib.import_module(node.module)
        for alias in node.names:
          assert hasattr(mod, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
              f"notebook imports {alias.name} from {node.module}, which does not exist")
