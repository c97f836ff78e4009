import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import browser
import pytest
import torch

from circuitkit import Scores, names
from circuitkit.circuit import Circuit
from circuitkit.viz import circuit_html
from circuitkit.viz.circuit import circuit_figure, layout


@pytest.fixture(scope="module")
def circuit():
    edges = names.all_edges(2, 4, True)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(0))
    scores = Scores(values, edges, "eap-ig", task="ioi", meta={"n_layers": 2, "n_heads": 4, "has_mlp": True})
    return Circuit.from_scores(scores).top_k(30)


def test_layout_by_layer(circuit):
    pos = layout(circuit, circuit.all_nodes)
    assert pos["input"][1] < pos["a0.h0"][1] < pos["m0"][1] < pos["a1.h0"][1] < pos["logits"][1]
    assert pos["a0.h0"][1] == pos["a0.h3"][1] and pos["a0.h0"][0] < pos["a0.h1"][0] < pos["m0"][0]


def test_figure_edges_hover_and_slider(circuit):
    fig = circuit_figure(circuit)
    hover = " ".join(t for trace in fig.data for t in (trace.hovertext or ()))
    for edge in circuit.edges:
        assert edge in hover
    assert "method: eap-ig" in hover and "score: " in hover
    lines = [t for t in fig.data if t.mode == "lines" and t.showlegend is False]  # drawn edges, not legend entries
    assert {t.line.color for t in lines} == {"#2563eb", "#dc2626"}  # both signs present
    widths = sorted({t.line.width for t in lines})
    assert len(widths) > 1  # width follows |score|
    steps = fig.layout.sliders[0].steps
    n_visible = [sum(s.args[0]["visible"]) for s in steps]
    assert n_visible[0] == len(fig.data) and n_visible == sorted(n_visible, reverse=True) and n_visible[-1] < n_visible[0]
    # the last step shows only the strongest edges: every edge drawn in a visible trace clears the threshold
    threshold = float(steps[-1].label)
    visible = [t for t, v in zip(fig.data, steps[-1].args[0]["visible"], strict=True) if v and t.hovertext and t.mode == "markers"]
    shown = [h for t in visible for h in t.hovertext if "->" in h]
    assert shown and all(abs(float(h.split("score: ")[1].split("<")[0])) >= threshold for h in shown)


def test_legend_names_the_head_inputs_and_the_title_follows_the_slider(circuit):
    fig = circuit_figure(circuit)
    legend = {t.name: t.line for t in fig.data if t.showlegend is not False}
    dash = {"q": "dot", "k": "dash", "v": "dashdot", None: "solid"}
    drawn = {names.parse_edge(e).qkv for e in circuit.edges}
    assert drawn >= {"q", "k", "v", None}
    assert {legend[n].dash for n in ("into a head's query", "into a head's key", "into a head's value",
                                      "into an MLP or the logits")} == set(dash.values())
    # the sign legend says what a colour means for circuitkit's estimators (needed edges are negative)
    assert (legend["score > 0: removing it raises the metric"].color,
            legend["score < 0: removing it lowers the metric (needed)"].color) == ("#2563eb", "#dc2626")
    # the edges are drawn with those dashes (q / k / v into one head land apart: see _ends)
    assert {t.line.dash for t in fig.data if t.mode == "lines" and t.showlegend is False} == set(dash.values())
    steps = fig.layout.sliders[0].steps
    titles = [s.args[1]["title"]["text"] for s in steps]
    assert titles[0] == fig.layout.title.text == f"eap-ig · ioi · {len(circuit.nodes)} nodes, {len(circuit.edges)} edges"
    for s, text in zip(steps[1:], titles[1:], strict=True):  # the edges the step leaves visible
        shown = [h.split("</b>")[0][3:] for t, v in zip(fig.data, s.args[0]["visible"], strict=True)
                 if v and t.mode == "markers" for h in (t.hovertext or ()) if "->" in h]
        n_nodes = len({n for e in shown for n in (names.parse_edge(e).parent, names.parse_edge(e).child)})
        assert text == f"eap-ig · ioi · {n_nodes} nodes, {len(shown)} edges (|score| ≥ {s.label})"
    assert circuit_figure(circuit, title="Mine").layout.sliders[0].steps[-1].args[1]["title"]["text"].startswith("Mine · ")


def test_node_circuit_figure():
    c = Circuit.from_scores(Scores.from_head_grid(torch.tensor([[1.0, -0.5], [0.1, 2.0]]), "patching"))
    fig = circuit_figure(c)
    assert sum(len(t.x) for t in fig.data) == 4 and fig.layout.sliders
    with pytest.raises(ValueError, match="edges must be"):
        circuit_figure(c, edges="some")


def read_png(path: Path) -> tuple[int, int, int, list[bytes]]:
    """A tiny PNG decoder (8-bit RGB / RGBA): ``(width, height, bytes per pixel, rows)``."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    data = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = data[y * (stride + 1)]
        line = bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def test_html_renders_in_headless_chromium(circuit, tmp_path):
    chromium = browser.chromium()
    html = circuit_html(circuit, tmp_path / "circuit.html")
    text = html.read_text()
    assert "plotly" in text.lower() and "a1.h" in text and "<script src=\"http" not in text  # standalone
    png = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={png}", "--window-size=1000,800", "--virtual-time-budget=5000", html.as_uri()],
                   check=True, capture_output=True, timeout=60)
    width, height, bpp, rows = read_png(png)
    assert (width, height) == (1000, 800)
    colours, coloured, total = set(), 0, 0
    for row in rows[::4]:
        for i in range(0, len(row), bpp * 4):
            r, g, b = row[i], row[i + 1], row[i + 2]
            colours.add((r, g, b))
            total += 1
            # the edge colours (blue / red) must actually be painted
            coloured += (b > 180 and r < 120) or (r > 180 and b < 120)
    assert len(colours) > 20, "the screenshot is (nearly) blank: Plotly did not draw"
    assert coloured / total > 0.002, f"too few blue/red edge pixels ({coloured}/{total})"


def test_a_missing_browser_skips_with_the_fix_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        browser.chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test.*apt-get install -y chromium"):
        browser.chromium()
