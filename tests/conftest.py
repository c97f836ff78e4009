"""Shared fixtures: tiny tokenizers and randomly initialised models (no network, seconds)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `zoo train` without --out writes to the user's zoo folder, which the zoo also searches: the tests
# get a folder of their own, so nothing they write shadows the bundled models or reaches $HOME.
# Each pytest-xdist worker gets its own (a worker inherits the controller's environment).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if "CIRCUITKIT_HOME" not in os.environ or WORKER:
    import tempfile

    os.environ["CIRCUITKIT_HOME"] = tempfile.mkdtemp(prefix=f"circuitkit-tests-home-{WORKER or 'main'}-")
if WORKER:  # the workers share the cores: one torch thread each, in the tests and their subprocesses
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from model_factory import make_model  # noqa: E402,F401  (re-exported for fixtures below)

torch.set_num_threads(1 if WORKER else max(1, min(2, torch.get_num_threads())))

# Tests run in two pytest-xdist workers (pyproject's addopts; `-n 0` runs them in one process).
# Tests that share a machine-wide resource run in one worker, one after another: Ray's local
# cluster (ports, /tmp/ray) and the browser tests (Chromium, the npm cache they fill). Modules
# whose expensive module fixture (every notebook executed, tiny-lm's corpus) would otherwise run
# in both workers stay in one.
SERIAL_GROUPS = {"ray": ("studies/test_ray_cluster.py", "studies/test_runner.py::test_ray"),
                 "browser": ("viz/test_viz_circuit.py::test_html_renders", "viz/test_viz_feature_cards.py::test_hovering_in_headless",
                             "test_circuit_tracers_viewer", "cli/test_cli_html_offline.py"),
                 "notebooks": ("notebooks/test_notebooks.py",),
                 "zoo-trained": ("zoo/test_trained.py",),
                 # one wheel build from the checkout at a time: two share its build/ folder and break each other
                 "packaging": ("test_packaging.py",)}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for group, patterns in SERIAL_GROUPS.items():
            if any(p in item.nodeid for p in patterns):
                item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def word_tokenizer():
    """The zoo's word-level tokenizer over every word the default builders use."""
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer

    return word_level_tokenizer(default_words())


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer trained offline on Python's docstrings."""
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import python_docs_corpus, train_bpe_tokenizer

    # Builder words repeated so that, as in GPT-2, common names are single tokens.
    extra = " ".join(default_words()) + ". "
    return train_bpe_tokenizer(python_docs_corpus(300_000) + extra * 50, vocab_size=3000)


@pytest.fixture(scope="session")
def tiny_model(word_tokenizer):
    return make_model(word_tokenizer)


@pytest.fixture(scope="session")
def tiny_attn_only(word_tokenizer):
    return make_model(word_tokenizer, attn_only=True, normalization_type=None, seed=1)


@pytest.fixture(scope="session")
def toy_model():
    """The hand-wired toy retrieval model (retrieval head known: a1.h0)."""
    from circuitkit.heads.toy import copy_retrieval_model

    return copy_retrieval_model(n_ctx=80)


@pytest.fixture(scope="session")
def toy_task(toy_model):
    from circuitkit.heads.toy import toy_needle_task

    return toy_needle_task(toy_model, context_lengths=(24, 48), depths=(0.0, 0.5, 1.0))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests: fastest there, and no OpenMP spin-waits
    on a busy machine (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def random_sae():
    return _random_sae


def _random_sae(d_in: int, d_sae: int, hook_name: str, seed: int = 0):
    """A SAELens ReLU SAE with random weights (and small random encoder biases) reading ``hook_name``."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.1)
    sae.cfg.metadata.hook_name = hook_name
    return sae
