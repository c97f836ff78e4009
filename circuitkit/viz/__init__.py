"""circuitkit.viz: Plotly figures only (circuits, patching grids, head maps, SAE features, study
reports). It sits above every analysis module and nothing below it imports it: a figure reaches
its object from outside (``circuit_figure(circuit)``, ``feature_card_html(card)``)."""

from circuitkit.viz.circuit import circuit_figure, circuit_html
from circuitkit.viz.heads import head_heatmap
from circuitkit.viz.patching import patching_heatmap
from circuitkit.viz.sae import feature_card_html, feature_density_histogram, top_examples_figure

__all__ = ["circuit_figure", "circuit_html", "feature_card_html", "feature_density_histogram", "head_heatmap",
           "patching_heatmap", "top_examples_figure"]
