"""Every notebook runs top to bottom offline on the zoo models and shows a Plotly figure, which
nbconvert's HTML export (what ``jupyter nbconvert --to html`` writes) draws too."""

import asyncio
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01_quickstart", "02_activation_patching", "03_retrieval_heads", "04_sae_features",
                     "05_ablation_study"):
        assert any(n.startswith(expected) for n in names), f"missing notebook {expected}"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every notebook executed, two kernels at a time (each on one torch thread): the kernels'
    start-up and imports overlap, which saves about a third of the wall time on 2 cores.
    ``{path: (notebook, outputs it was stored with, the execution error or None)}``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           # the kernel imports this checkout's circuitkit, not whichever one is installed
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PLOTLY_RENDERER", None)  # the notebooks pick circuitkit's renderer

    async def run(path, gate):
        out = tmp_path_factory.mktemp(path.stem)
        nb = nbformat.read(path, as_version=4)
        stored = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        async with gate:
            try:
                await NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(out)}}).async_execute(
                    env={**env, "CIRCUITKIT_NOTEBOOK_OUT": str(out)})
            except Exception as exc:  # reported by that notebook's test
                return path, nb, stored, exc
        return path, nb, stored, None

    async def run_all():
        gate = asyncio.Semaphore(2)
        return await asyncio.gather(*(run(path, gate) for path in NOTEBOOKS))

    return {path: (nb, stored, error) for path, nb, stored, error in asyncio.run(run_all())}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, executed):
    nb, stored, error = executed[path]
    assert not stored, f"{path.name} is stored with outputs; clear them before committing"
    if error is not None:
        raise error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # nothing a reader would take for a problem: no warning in any stream (tqdm draws widgets)
    streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Warning" not in streams, f"{path.name} prints a warning: {streams[:300]}"
    figures = [o for o in outputs if PLOTLY_MIME in o.get("data", {})]
    assert figures, f"{path.name} shows no Plotly figure"
    # each figure also carries HTML, and the HTML export draws it with plotly.js embedded (offline)
    assert all("plotly-graph-div" in o["data"].get("text/html", "") for o in figures)
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert html.count("Plotly.newPlot(") >= len(figures), f"the HTML export of {path.name} lacks figures"
    assert "plotly.js v" in html, f"the HTML export of {path.name} does not embed plotly.js"
    assert not re.search(r'(src=|import )"https://cdn\.plot\.ly', html), "figures must not need plotly's CDN"
