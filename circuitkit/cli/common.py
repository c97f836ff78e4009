"""What several commands share: resolving a model's task, checking output folders, writing tables
and figures (through :mod:`circuitkit.atomic`, so nothing is left half-written)."""

from __future__ import annotations

from pathlib import Path

from circuitkit.atomic import write_text, write_with
from circuitkit.models.loading import parse_spec


def resolve_task(model_spec: str, model, task_name: str | None, *, default: str | None = None, **params):
    """The task a command runs: a zoo model's own card task (when ``task_name`` is None or names the
    card's builder), else the named builder (``default`` when none is named) with the model's tokenizer."""
    from circuitkit.models.zoo_store import zoo_card, zoo_task
    from circuitkit.tasks.builders import build_task

    zoo = parse_spec(model_spec).zoo_name
    if zoo is not None:
        card = zoo_card(zoo)
        if task_name is None or task_name == card.task["builder"]:
            return zoo_task(card, model, **params)
    name = task_name or default
    if name is None:
        raise ValueError("--task is required for models outside the zoo (e.g. --task ioi)")
    return build_task(name, model, **params)


def check_out_folder(*paths: str | Path | None) -> None:
    """``FileNotFoundError`` before any work when an output's folder does not exist."""
    for path in paths:
        if path is not None and not Path(path).parent.is_dir():
            raise FileNotFoundError(f"output folder {Path(path).parent} does not exist; create it first")


def write_table(path: str | Path, frame, make_parents: bool = False) -> Path:
    """A pandas table as ``.parquet`` (by suffix) or CSV, written atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        return write_with(path, lambda p: frame.to_parquet(p, index=False), make_parents=make_parents)
    return write_with(path, lambda p: frame.to_csv(p, index=False), make_parents=make_parents)


def write_figure(path: str | Path, fig, make_parents: bool = False) -> Path:
    """A Plotly figure as standalone HTML (Plotly from its CDN), written atomically."""
    return write_with(Path(path), lambda p: fig.write_html(p, include_plotlyjs="cdn"), make_parents=make_parents)


def write_html(path: str | Path, body: str) -> Path:
    """An HTML fragment as a standalone page, written atomically."""
    return write_text(path, f"<!doctype html><meta charset='utf-8'><body>{body}</body>")


