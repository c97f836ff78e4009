"""One root for the errors circuitkit raises on purpose.

Every deliberate error is a `CircuitkitError` whose message names the problem and the fix;
each also keeps the built-in parent it always had (``ValueError``, ``KeyError``, ...), so
``except ValueError`` goes on working. The command line turns a ``CircuitkitError`` into one
line and exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["CircuitkitError", "InputError", "InputTypeError", "MissingDependencyError", "MissingFileError", "RunError",
           "UnknownNameError"]


class CircuitkitError(Exception):
    """The root: a problem circuitkit found and named (a user's input, a model it cannot run).

    Examples:
        >>> import circuitkit as ck
        >>> try:
        ...     ck.zoo_card("no-such-model")
        ... except ck.CircuitkitError as exc:
        ...     print(type(exc).__name__, isinstance(exc, KeyError))
        UnknownNameError True
    """


class InputError(CircuitkitError, ValueError):
    """A value that cannot be used: out of range, malformed, inconsistent with another."""


class InputTypeError(CircuitkitError, TypeError):
    """A value of the wrong type."""


class UnknownNameError(CircuitkitError, KeyError):
    """A name that is not there (a zoo model, a node, a hook); the message lists what is."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0]) if self.args else ""


class MissingFileError(CircuitkitError, FileNotFoundError):
    """A file or folder the call needs does not exist."""


class RunError(CircuitkitError, RuntimeError):
    """A run that cannot go on (a model whose forward pass fails, a study interrupted)."""


class MissingDependencyError(CircuitkitError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra to
    install from the checkout (``python -m pip install -e ".[extra]"``; the PyPI name
    ``circuitkit`` is another project's)."""
