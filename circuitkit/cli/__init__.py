"""``circuitkit`` command line: a thin layer over the public API (one module per command)."""

from circuitkit.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
