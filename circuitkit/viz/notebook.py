"""How notebooks show Plotly figures so that they render outside Jupyter too.

``jupyter nbconvert --execute`` (and any kernel without a live front end) stores a figure as
``application/vnd.plotly.v1+json`` only, which JupyterLab draws but nbconvert's HTML, nbviewer and
other viewers skip. `NOTEBOOK_RENDERER` stores each figure twice: that Plotly bundle (for
JupyterLab / VS Code) and ``text/html`` drawn by a copy of plotly.js embedded once per notebook
(plotly's ``notebook`` renderer), so the HTML export works offline. GitHub's notebook preview runs
no JavaScript and shows neither.
"""

from __future__ import annotations

import os

NOTEBOOK_RENDERER = "plotly_mimetype+notebook"


def use_notebook_renderer() -> str:
    """Make `NOTEBOOK_RENDERER` Plotly's default renderer, unless ``PLOTLY_RENDERER`` is set
    (an explicit choice wins). Returns the renderer now in use."""
    import plotly.io as pio

    if not os.environ.get("PLOTLY_RENDERER"):
        pio.renderers.default = NOTEBOOK_RENDERER
    return pio.renderers.default
