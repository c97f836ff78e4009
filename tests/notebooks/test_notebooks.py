"""Every notebook runs top to bottom offline on the zoo models and shows a Plotly figure."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01_quickstart", "02_activation_patching", "03_retrieval_heads", "04_sae_features",
                     "05_ablation_study"):
        assert any(n.startswith(expected) for n in names), f"missing notebook {expected}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PLOTLY_RENDERER", "plotly_mimetype")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CIRCUITKIT_NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    stored = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not stored, f"{path.name} is stored with outputs; clear them before committing"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(PLOTLY_MIME in o.get("data", {}) for o in outputs), f"{path.name} shows no Plotly figure"
