"""Every public function and class of the top-level API shows a runnable example, and it runs.

The names are read from ``circuitkit.__all__`` at collection time, so a name added later without an
``Examples:`` section in its docstring fails here. Modules (``names``, ``metrics``), constants
(``ABLATIONS``) and ``__version__`` have no example to run. Each docstring's own examples run
(``recurse=False``: a class's methods are not required to have any) in a fresh namespace.
"""

from __future__ import annotations

import doctest
import inspect
import io

import pytest

import circuitkit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _documented(name: str) -> bool:
    """A function or class defined inside circuitkit (not a module, a constant or the version)."""
    obj = getattr(circuitkit, name)
    return ((inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", "").split(".")[0] == "circuitkit")


NAMES = [name for name in circuitkit.__all__ if name != "__version__" and _documented(name)]


def test_the_api_has_names_to_check():
    assert len(NAMES) > 40 and {"eap", "Circuit", "run_study"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_examples_run(name):
    obj = getattr(circuitkit, name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, f"circuitkit.{name}", globs={})
    examples = sum(len(test.examples) for test in tests)
    assert examples, f"circuitkit.{name}: its docstring has no doctest example; add an `Examples:` section"
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    failed = sum(runner.run(test, out=report.write).failed for test in tests)
    assert not failed, f"circuitkit.{name}: {failed} of {examples} examples failed\n{report.getvalue()}"
