"""The example notebook runs headless, top to bottom: it builds a tiny dataset from the demo archive, loads it
and draws a light curve."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tglc_example.ipynb"


def test_notebook_runs_and_saves_a_figure(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")

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

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError on the first cell that fails

    png = out / "tglc_example.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not any(output.output_type == "error" for output in outputs)
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure shown"
    text = "".join(output.get("text", "") for output in outputs)
    assert "lightcurve keys: ['time', 'psf_flux', 'aper_flux', 'tess_flags', 'tglc_flags']" in text
    assert "100 downloaded" in text  # it built the dataset itself, from the demo archive
    assert len(list(out.glob("TGLC/healpix=*/*.hdf5"))) > 0
