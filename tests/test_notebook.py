"""The example notebook runs headless, top to bottom, from a copy in a scratch folder: it builds a tiny dataset from
the demo archive, loads it with plain ``datasets``, opens the HATS catalog with LSDB when hats is installed, and
saves its figure beside the notebook."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tglc_example.ipynb"


def test_notebook_runs_and_saves_a_figure(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")

    here = tmp_path / "notebook"
    here.mkdir()
    shutil.copyfile(NOTEBOOK, here / NOTEBOOK.name)
    data = tmp_path / "tglc_data"
    out = data / "s0023" / "MultimodalUniverse"
    # The kernel inherits this environment: data in tmp, headless plotting, Hugging Face offline and out of ~.
    monkeypatch.setenv("TGLC_EXAMPLE_DIR", str(data))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    notebook = nbformat.read(here / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(here)}})
    client.execute()  # raises CellExecutionError on the first cell that fails

    png = here / "tglc_example.png"  # beside the notebook, not in the dataset
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(data.rglob("*.png"))
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not any(output.output_type == "error" for output in outputs)
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure shown"
    text = "".join(output.get("text", "") for output in outputs)
    assert "100 downloaded" in text  # it built the dataset itself, from the demo archive
    assert "'n_cadences', 'time', 'psf_flux', 'aper_flux', 'tess_flags', 'tglc_flags']" in text  # plain datasets
    assert (out / "README.md").is_file() and len(list(out.glob("TGLC/healpix=*/*.hdf5"))) > 0
    if all(importlib.util.find_spec(name) for name in ("hats", "lsdb")):
        assert "HATS catalog: 100 light curves in " in text
    else:
        assert "hats and lsdb are not installed" in text
