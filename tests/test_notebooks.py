"""Every notebook under docs/notebooks/ runs top to bottom (nbclient, a fresh python3 kernel, this
tree first on the path), so the teaching material cannot rot. Each notebook asserts its own
claims (the ordering law, the MILP optimum against a brute-force grid, the smoothing radius)."""

from __future__ import annotations

import os

import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "docs" / "notebooks").glob("*.ipynb"))


@pytest.mark.slow  # a kernel start and a few MILPs: about 10 s of CPU
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install -e '.[test]')")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel installed (python -m ipykernel install --user)")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    errors = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_there_is_a_teaching_notebook():
    assert any(p.name == "teaching.ipynb" for p in NOTEBOOKS)
