"""Headless Chromium and npm packages for the browser tests.

Outside CI a missing browser or npm skips the test with the fix; under CI (``CI=true``) it fails,
so CI always runs the browser tests. npm packages are fetched from the registry at test time
(``npm pack``), kept in a per-user cache and never committed.
"""

from __future__ import annotations

import json
import os
import shutil
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
