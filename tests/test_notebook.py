"""The quickstart notebook runs from top to bottom (nbclient, the venv's own kernel)."""

import pytest
from conftest import REPO
from gdino_helpers import needs_vocab

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


@needs_vocab
def test_quickstart_notebook_runs(tmp_path):
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the overlay grid
    assert any("mIoU" in str(o) for o in outputs)  # the evaluation table
