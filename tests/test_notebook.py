"""examples/quickstart.ipynb runs from top to bottom (at the tiny size), so it cannot rot."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_reproduces_the_recorded_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("PRUNELAB_OUT_DIR", str(tmp_path / "runs"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(str(o) for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "test accuracy" in outputs and "image/png" in outputs and "max_abs_diff" in outputs
    assert (tmp_path / "runs" / "notebook-tiny" / "notebook.onnx").is_file()
