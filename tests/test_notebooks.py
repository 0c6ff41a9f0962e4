"""The notebooks run top to bottom, so what they show stays true (they use MiniLM and MR: integration).

Executed with nbclient in a fresh kernel from the notebooks' folder, like ``pytest --nbmake``,
on a smaller MR subset than the notebooks' own default (``SEQPOOL_NOTEBOOK_TEXTS``, 300 unless
set) to keep the suite fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.integration
@pytest.mark.parametrize("name", ["pooling_comparison.ipynb", "token_maps.ipynb", "aliasing.ipynb",
                                  "segment_pooling.ipynb"])
def test_notebook_runs(name, senteval_dir, monkeypatch):
    monkeypatch.setenv("SEQPOOL_NOTEBOOK_TEXTS", os.environ.get("SEQPOOL_NOTEBOOK_TEXTS", "300"))
    monkeypatch.setenv("SEQPOOL_DATA", str(senteval_dir))
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # "python3" is ipykernel's own spec: a kernel running this interpreter (sys.executable).
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert errors == []
    assert all(cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code")
