"""circuitkit.viz: Plotly figures only (circuits, patching grids, head maps, SAE features, study
reports); it imports nothing above it, and below it only ``Circuit.figure`` / ``Circuit.to_html``
and ``FeatureCard.to_html`` call into it, as one-line conveniences."""
