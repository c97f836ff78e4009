"""Headless Chromium and npm packages for the browser tests.

Outside CI a missing browser or npm skips the test with the fix; under CI (``CI=true``) it fails,
so CI always runs the browser tests. npm packages are fetched from the registry at test time
(``npm pack``), kept in a per-user cache and never committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "circuitkit-tests" / "npm"


def _missing(fix: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the browser test: {fix}")
    pytest.skip(fix)


def chromium() -> str:
    """The headless browser, or a skip (a failure under CI) naming the fix."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("the browser test needs Debian's chromium package: apt-get install -y chromium")
    return found


def npm_package(spec: str) -> Path:
    """The unpacked ``package/`` folder of ``spec`` (``name@exact.version``) from the npm registry."""
    folder = CACHE / spec.replace("/", "+")
    if (folder / "package" / "package.json").exists():
        return folder / "package"
    npm = shutil.which("npm")
    if npm is None:
        _missing("the viewer test vendors JavaScript from the npm registry and needs npm: apt-get install -y npm")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    done = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", str(staging)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"npm pack {spec} failed (is the npm registry reachable?): {done.stderr.strip()[-400:]}")
    tarball = staging / json.loads(done.stdout)[0]["filename"]
    with tarfile.open(tarball) as archive:
        archive.extractall(staging, filter="data")
    tarball.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # complete or absent: a half-unpacked package is never reused
    return folder / "package"


def dump_dom(url: str, profile: Path, budget_ms: int = 8000) -> tuple[str, list[str]]:
    """The page's DOM after ``budget_ms`` of virtual time, and its console messages."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


# circuit-tracer's viewer page loads six scripts from the web; the tests serve npm's copies instead.
# d3.js on transformer-circuits.pub is d3 v7; its jetpack build is d3-jetpack's, whose nestBy still
# calls d3.nest (d3-collection, dropped from d3 in v6) and whose conventions() returns the chart
# without a drawAxis method, which the 2024 build adds (a three-line shim below). The live-reload
# client and the .npy reader are not needed to show a graph.
VIEWER_SCRIPTS = {
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/d3.js":
        [("d3@7.9.0", "dist/d3.min.js"), ("d3-collection@1.0.7", "dist/d3-collection.min.js")],
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/jetpack_2024-07-20.js":
        [("d3-jetpack@2.2.1", "build/d3-jetpack.cjs")],
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": [("dagre@0.8.5", "dist/dagre.min.js")],
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": [("pako@2.1.0", "dist/pako.min.js")],
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/hotserver-client-ws.js": [],
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/npy_v0.js": [],
}
DRAW_AXIS_SHIM = ("<script>(function(){var conventions = d3.conventions; d3.conventions = function(options){"
                  "var c = conventions(options); c.drawAxis = function(svg){"
                  "return d3.drawAxis(Object.assign({}, c, {svg: svg || c.svg}))}; return c}})()</script>")


def offline_circuit_tracer_viewer(folder: Path) -> Path:
    """A copy of circuit-tracer's viewer (``frontend/assets``) whose scripts are all local."""
    import circuit_tracer

    shutil.copytree(Path(circuit_tracer.__file__).parent / "frontend" / "assets", folder)
    page = (folder / "index.html").read_text()
    remote = set(re.findall(r"<script src='(https?://[^']+)'></script>", page))
    assert remote == set(VIEWER_SCRIPTS), f"circuit-tracer's viewer loads other scripts now: {remote ^ set(VIEWER_SCRIPTS)}"
    (folder / "vendor").mkdir()
    for url, files in VIEWER_SCRIPTS.items():
        tags = []
        for spec, inside in files:
            local = f"vendor/{spec.replace('@', '-')}.js"
            shutil.copy(npm_package(spec) / inside, folder / local)
            tags.append(f"<script src='./{local}'></script>")
        if "jetpack" in url:
            tags.append(DRAW_AXIS_SHIM)
        page = page.replace(f"<script src='{url}'></script>", "".join(tags))
    assert "<script src='http" not in page
    (folder / "index.html").write_text(page)
    return folder


def circuit_tracer_view(data_dir: Path, slug: str, work: Path) -> tuple[str, list[str]]:
    """The DOM and console of circuit-tracer's own viewer showing ``data_dir/{slug}.json``, served by
    its own ``local_server.serve`` from an offline copy, in headless Chromium."""
    from circuit_tracer.frontend.local_server import serve

    chromium()  # skip / fail before any work when absent
    front = offline_circuit_tracer_viewer(work / "viewer")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(str(data_dir), frontend_dir=str(front), port=port)
    try:
        return dump_dom(f"http://localhost:{port}/index.html?slug={slug}", work / "profile")
    finally:
        server.stop()


def check_circuit_tracer_draws(data_dir: Path, slug: str, work: Path) -> None:
    """circuit-tracer's viewer draws every node of ``data_dir/{slug}.json`` in its pinned subgraph
    with its label (token nodes as ``Emb: "token"``), one marker per node, one path per link, and
    logs no error."""
    graph = json.loads((data_dir / f"{slug}.json").read_text())
    dom, console = circuit_tracer_view(data_dir, slug, work)
    errors = [line for line in console if "Uncaught" in line or "Error" in line]
    assert not errors, errors
    labels = [re.sub(r"<[^>]+>", "\n", m).split("\n") for m in re.findall(r'class="node-text-container">(.*?)</div>', dom)]
    shown = {text.strip() for label in labels for text in label if text.strip()}
    tokens = graph["metadata"]["prompt_tokens"]
    for node in graph["nodes"]:
        if node["feature_type"] == "embedding":
            assert any(text.startswith("Emb:") and tokens[node["ctx_idx"]].strip() in text for text in shown), node
        else:
            assert node["clerp"] in shown, (node["clerp"], shown)
    assert dom.count('class="node pinned"') == len(graph["nodes"])
    assert dom.count('class="link-path"') == len(graph["links"])
