"""Every Python block of the README and the docs is executed, so none can rot.

Blocks of one page run in order in one namespace (a later block may use an earlier one's names),
in a temporary working directory (the blocks write files).
"""

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def quickstart_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- section:quickstart -->", 1)[1].split("<!-- /section:quickstart -->", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README quickstart has no python block"
    return blocks[0]


def test_quickstart_runs_prints_what_the_readme_says_and_warns_nothing(tmp_path):
    """Run as a user runs it (a script in a fresh interpreter, Python's default warning filters):
    its output is the README's, and nothing is printed to stderr."""
    import os
    import subprocess
    import sys

    code = quickstart_code()
    assert len(code.strip().splitlines()) <= 10
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = (ROOT / "README.md").read_text().split("<!-- /section:quickstart -->", 1)[0]
    expected = re.findall(r"```text\n(.*?)```", text, flags=re.S)[-1]
    assert done.stdout == expected


def test_every_page_with_python_is_collected():
    pages = [p.name for p in PAGES if python_blocks(p)]
    assert {"README.md", "patching.md", "circuits.md", "sae.md", "attribution.md"} <= set(pages)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # the studies page runs examples/ specs
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(python_blocks(page)):
        exec(compile(code, f"{page.name}-block{i}", "exec"), namespace)
