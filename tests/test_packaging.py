"""A wheel, installed into a fresh virtual environment and run from outside the checkout, carries
the zoo: ``circuitkit zoo list`` shows every bundled model and the README quickstart runs.

The fresh environment gets circuitkit from the wheel alone; its dependencies (torch,
TransformerLens, SAELens ...) are read from this interpreter's site-packages through a ``.pth``
line, so nothing is downloaded. A ``.pth`` line only adds a folder to ``sys.path``: the ``.pth``
files inside it (the editable install of this checkout among them) are not run there.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_readme import quickstart_code

from circuitkit.models.zoo_store import BUNDLED_ZOO, CARD_FILE

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted(card.parent.name for card in BUNDLED_ZOO.glob(f"*/{CARD_FILE}"))  # the checkout's data/zoo


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin folder, a working folder outside the checkout, environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    # Built from a copy of what a wheel is made of, so that the build's own build/ folder is not the
    # checkout's, where other tests running beside this one may write.
    source = tmp / "source"
    source.mkdir()
    for name in ("circuitkit", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # --no-build-isolation: build with this environment's setuptools, so the test runs offline
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
         tmp, dict(os.environ))
    (wheel,) = dist.glob("circuitkit-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, dict(os.environ))
    python = venv / "bin" / "python"
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "parent_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CIRCUITKIT_ZOO_PATH")}
    env.update(HF_HUB_OFFLINE="1", CIRCUITKIT_HOME=str(tmp / "home"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         tmp, env)
    work = tmp / "elsewhere"
    work.mkdir()
    return python, venv / "bin", work, env, wheel


def test_the_wheel_carries_every_zoo_file(installed):
    *_, wheel = installed
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("circuitkit/data/zoo/")}
    expected = {f"circuitkit/data/zoo/{name}/{f}" for name in BUNDLED
                for f in ("card.json", "model.safetensors", "tokenizer.json")}
    assert len(expected) == 30 and expected <= shipped


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    python, _, work, env, _ = installed
    where = _run([str(python), "-c", "import circuitkit, circuitkit.models.zoo_store as z; "
                  "print(circuitkit.__file__); print(z.BUNDLED_ZOO)"], work, env).split()
    assert all(str(ROOT) not in w and "site-packages" in w for w in where), where


def test_zoo_list_shows_all_ten_models_from_outside_the_checkout(installed):
    _, bin_dir, work, env, _ = installed
    out = _run([str(bin_dir / "circuitkit"), "zoo", "list"], work, env)
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == BUNDLED and len(listed) == 10


def test_readme_quickstart_runs_from_the_wheel(installed):
    python, _, work, env, _ = installed
    out = _run([str(python), "-c", quickstart_code()], work, env)
    assert "mean-ablating a1.h0" in out and "behaviour recovered" in out and "Task(" in out


def test_zoo_train_writes_to_the_user_folder_not_the_package(installed):
    _, bin_dir, work, env, _ = installed
    out = _run([str(bin_dir / "circuitkit"), "zoo", "train", "induction-handbuilt", "--no-progress"], work, env)
    written = Path(out.strip().rsplit(" to ", 1)[1])
    assert written == Path(env["CIRCUITKIT_HOME"]) / "zoo" / "induction-handbuilt"
    assert (written / "model.safetensors").is_file() and "site-packages" not in str(written)
