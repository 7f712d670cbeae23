"""The example notebook runs headless, top to bottom, from a copy in a scratch folder: it builds a tiny dataset from
the demo archive, loads it with plain ``datasets``, opens the HATS catalog with LSDB when hats is installed, and
saves its figure beside the notebook; then it builds a three-sector demo release, reads one star of its stars
catalog as numpy arrays per sector and plots it, stitched by lightkurve when lightkurve is installed (run both ways:
as installed, and with lightkurve hidden from the kernel)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tglc_example.ipynb"


@pytest.mark.parametrize("lightkurve", ["as installed", "hidden"])
def test_notebook_runs_and_saves_a_figure(tmp_path, monkeypatch, lightkurve):
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
    path = [str(REPO), os.environ.get("PYTHONPATH")]
    with_lightkurve = lightkurve == "as installed" and importlib.util.find_spec("lightkurve") is not None
    if lightkurve == "hidden":  # the kernel cannot import lightkurve (find_spec gives None), as if not installed
        hide = tmp_path / "hide_lightkurve"
        hide.mkdir()
        (hide / "sitecustomize.py").write_text('import sys\nsys.modules["lightkurve"] = None\n')
        path.insert(0, str(hide))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))

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
        assert 'The stars catalog needs hats: pip install "tglc-builder[hats]"' in text
        return

    # The release: 100 objects of each of sectors 1-3; the star of the lowest Gaia id among those in all three.
    release = data / "release"
    assert "300 light curves in the output" in text
    assert "Stars catalog of sectors [1, 2, 3] in " in text
    assert "285 stars, 7 of them in 3 sectors" in text
    assert "Gaia DR3 1551074815713681911 (TIC 421602705): sectors [1, 2, 3]" in text
    for sector, first, last in ((1, "1325.30", "1351.49"), (2, "1352.70", "1378.89"), (3, "1380.10", "1406.29")):
        assert (f"  sector {sector}, camera 4 CCD 1: 1258 cadences, time float64 {first}-{last} TBJD, "
                "aper_flux float32") in text
        assert len(list((release / f"s{sector:04d}" / "MultimodalUniverse").glob("TGLC/healpix=*/*.hdf5"))) > 0
    assert (release / "stars" / "tglc_stars" / "hats.properties").is_file()
    star_png = here / "tglc_star.png"
    assert star_png.is_file() and star_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2
    if with_lightkurve:
        assert "lightkurve: 3 light curves stitched into one of 3774 cadences" in text
        assert "lightkurve is not installed" not in text
    else:
        assert ('lightkurve is not installed: pip install "tglc-builder[hats,lightkurve]" (one command) to stitch with '
                "it; plotting the numpy arrays instead") in text
        assert "stitched into" not in text
