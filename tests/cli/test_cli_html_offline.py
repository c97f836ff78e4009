"""Every command's --html page is self-contained: headless Chromium with the network cut off (a dead
proxy) draws its Plotly figure, and no script is fetched from elsewhere."""

import re
from pathlib import Path

import browser
import pytest

from circuitkit.cli import main

SAES = Path(__file__).resolve().parents[2] / "data" / "zoo" / "induction-handbuilt" / "saes"

COMMANDS = {
    "patch": ["patch", "zoo:induction-handbuilt", "--component", "resid_pre", "--out", "{tmp}/p.csv"],
    "discover": ["discover", "zoo:induction-handbuilt", "--method", "eap", "--top-k", "5", "--out", "{tmp}/c.json"],
    "heads retrieval": ["heads", "retrieval", "zoo:retrieval-handbuilt"],
    "heads score": ["heads", "score", "zoo:induction-handbuilt", "--kind", "induction"],
    "heads needle-grid": ["heads", "needle-grid", "zoo:retrieval-handbuilt", "--keep", "a1.h0", "--lengths", "128",
                          "--depths", "0", "1", "--window", "16"],
    "sae circuit": ["sae", "circuit", "zoo:induction-handbuilt", str(SAES / "blocks.1.hook_resid_pre"),
                    "--n-prompts", "4", "--steps", "2", "--top", "8"],
}


def offline_dom(page: Path, profile: Path) -> str:
    import subprocess

    done = subprocess.run([browser.chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                           "--disable-background-networking", "--disable-component-update", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_html_page_draws_its_figure_offline(command, tmp_path):
    browser.chromium()  # skip (fail under CI) before any work when absent
    page = tmp_path / "page.html"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]] + ["--html", str(page), "--no-progress"]
    assert main(argv) == 0
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=[\"']https?://", html), "the page loads a script from the network"
    dom = offline_dom(page, tmp_path / "profile")
    assert 'class="main-svg"' in dom, f"{command}: Plotly drew nothing offline"
