"""notebooks/walkthrough.ipynb executes top to bottom (nbclient, a fresh python3 kernel) on a
small finished run, with CURATE_RUN pointing at it; its recipe comparison reproduces the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_small_run

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_executes_on_a_run(tmp_path, monkeypatch):
    run = make_small_run(tmp_path, rows_per_shard=100)
    monkeypatch.setenv("CURATE_RUN", str(run))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "commit the notebook without outputs"
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parents[1])}})
    client.execute()  # raises CellExecutionError on the first failing cell
    printed = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert f"run {run}" in printed and "rows out:" in printed and "Jaccard" in printed
    images = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert len(images) == 1  # the score histogram
