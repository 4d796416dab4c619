"""The Colab notebook: valid Python, imports that exist, and executed top to bottom (small-size flag)."""
import ast
import importlib
import importlib.util
import json
import pathlib

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "maskfeat_colab.ipynb"


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


@pytest.mark.slow
def test_notebook_executes(golden_dir, monkeypatch, tmp_path):
  """Every cell runs (a failing cell fails the test), in small mode, with an official-format checkpoint."""
  monkeypatch.setenv("MASKFEAT_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("MASKFEAT_CHECKPOINT", str(golden_dir / "maskmvit_tiny_pt.pyth"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "frame from bikes.mp4" in text  # a real video frame, not the synthetic fallback
  assert "maskmvit_tiny_pt.pyth: maskfeat model" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 5, f"{len(images)} pictures"  # clip, HOG glyphs, mask, curves, prediction
  nbformat.write(nb, tmp_path / "executed.ipynb")  # (kept for a look when debugging)
