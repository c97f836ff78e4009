"""Render docs/circuit.png: an EAP-IG circuit drawn by circuitkit.viz, screenshotted by headless Chromium.

    python docs/make_figure.py [--model induction-handbuilt] [--out docs/circuit.png]
    python docs/make_figure.py --by-pos      # docs/circuit_by_pos.png: the position-resolved circuit

Uses the zoo model when it is on the zoo path, else the benchmark's tiny fallback model.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from circuitkit.viz import circuit_html

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="induction-handbuilt")
    parser.add_argument("--out", default=None, help="docs/circuit.png (docs/circuit_by_pos.png with --by-pos)")
    parser.add_argument("--by-pos", action="store_true", help="a position-resolved circuit, drawn token by token")
    args = parser.parse_args(argv)
    args.out = args.out or str(ROOT / "docs" / ("circuit_by_pos.png" if args.by_pos else "circuit.png"))
    torch.set_num_threads(1)

    from circuitkit.circuit.discovery import discover
    from circuitkit.zoo import list_zoo, load_zoo_model, zoo_task

    if args.model in {card.name for card in list_zoo()}:
        model = load_zoo_model(args.model)
        task = zoo_task(args.model, model)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from discovery import fallback_model

        print(f"zoo model {args.model!r} not found: drawing the fallback model")
        model, task, _ = fallback_model()
    circuit = discover(model, task, "eap-ig", ablation="mean", by_pos=args.by_pos)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium package: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        html = circuit_html(circuit, Path(tmp) / "circuit.html",
                               title=f"EAP-IG {'position-resolved ' if args.by_pos else ''}circuit of "
                                     f"{model.cfg.model_name} on {task.name} "
                                     f"(faithfulness {circuit.meta['faithfulness']:.2f})")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}",
                        f"--screenshot={Path(tmp) / 'shot.png'}",
                        "--window-size=1400,700" if args.by_pos else "--window-size=900,640", "--hide-scrollbars",
                        "--virtual-time-budget=5000", html.as_uri()], check=True, capture_output=True, timeout=120)
        shutil.copyfile(Path(tmp) / "shot.png", args.out)
    print(f"wrote {args.out}: {circuit}")


if __name__ == "__main__":
    main()
