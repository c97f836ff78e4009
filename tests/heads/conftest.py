"""Fixtures for head scores: the hand-wired toy retrieval model (retrieval head known: a1.h0)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_model():
    from circuitkit.heads.toy import copy_retrieval_model

    return copy_retrieval_model(n_ctx=80)


@pytest.fixture(scope="session")
def toy_task(toy_model):
    from circuitkit.heads.toy import toy_needle_task

    return toy_needle_task(toy_model, context_lengths=(24, 48), depths=(0.0, 0.5, 1.0))
