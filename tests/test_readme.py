"""The README's quickstart is executed, so it cannot rot."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    section = text.split("<!-- section:quickstart -->", 1)[1].split("<!-- /section:quickstart -->", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README quickstart has no python block"
    return blocks[0]


def test_quickstart_runs(capsys):
    code = quickstart_code()
    assert len(code.strip().splitlines()) <= 10
    exec(compile(code, "README-quickstart", "exec"), {})
    assert capsys.readouterr().out.strip()
