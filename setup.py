"""Packaging beyond pyproject.toml: the top-level ``data/`` folder ships as ``circuitkit.data``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["circuitkit", "circuitkit.*"]), "circuitkit.data"],
    package_dir={"circuitkit.data": "data"},
)
