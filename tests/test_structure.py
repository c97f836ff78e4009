"""The package's structure: imports run downward only, no private names cross modules, and each
idea the project keeps in one home is defined there alone. Read from the source (ast), not run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "circuitkit"

# Floors, lowest first: a module may import its own floor or a lower one, never a higher one.
FLOORS = {
    "circuitkit.version": 0, "circuitkit.lazy": 0, "circuitkit.names": 0, "circuitkit.atomic": 0, "circuitkit.tokenizers": 0,
    "circuitkit.lifeline": 0,  # spawned workers that die with their driver: standard library only
    "circuitkit.errors": 0,  # the one root of deliberate errors
    "circuitkit.models.backend": 0,  # the model layer: every method reaches a model through it
    "circuitkit.scores": 1, "circuitkit.tasks": 1,
    "circuitkit.circuit.core": 1,  # the Circuit type stands beside Scores: it imports names and scores only
    "circuitkit.ablation": 2, "circuitkit.models": 2,
    "circuitkit.patching": 3, "circuitkit.attribution": 3, "circuitkit.heads": 3, "circuitkit.sae": 3,
    "circuitkit.circuit": 4,
    "circuitkit.zoo": 5, "circuitkit.studies": 5,
    "circuitkit.viz": 6,
    "circuitkit.cli": 7,
    "circuitkit": 8,  # the top-level package: the public API
}
# Late (in-function) imports that are allowed, and why: a CLI command imports what it runs; the top-level
# package loads the studies (pyarrow, process pools) on first use; the zoo store reads cards
# (`zoo list`) without the task builders' torch.
LATE_OK = {
    "circuitkit": {"circuitkit.studies"},
    "circuitkit.models.zoo_store": {"circuitkit.tasks.builders"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _floor(module: str) -> int:
    while module not in FLOORS:
        module = module.rpartition(".")[0]
    return FLOORS[module]


def _resolve(name: str) -> str | None:
    """The circuitkit module an imported dotted name lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path):
    """``(target module, imported names, is_late)`` for every circuitkit import outside ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    late = {id(n) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("circuitkit"):
            for alias in node.names:
                target = _resolve(f"{node.module}.{alias.name}")
                yield target, alias.name, id(node) in late
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("circuitkit"):
                    yield _resolve(alias.name), alias.name, id(node) in late


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in _imports(path):
            if target and target != module and not module.startswith(target + "."):
                edges[module].add(target)
    return edges


def test_no_import_circles_late_imports_included():
    edges = _graph()
    circles, seen, stack = [], set(), []

    def visit(u):
        seen.add(u)
        stack.append(u)
        for v in sorted(edges[u]):
            if v in stack:
                circles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in seen:
                visit(v)
        stack.pop()

    for module in sorted(edges):
        if module not in seen:
            visit(module)
    assert not circles, circles


def test_imports_run_downward_and_late_imports_have_a_reason():
    upward, late = [], []
    for module, path in sorted(MODULES.items()):
        cli = module.startswith("circuitkit.cli")
        for target, _, is_late in _imports(path):
            if target is None or target == module or module.startswith(target + "."):
                continue
            allowed_late = target in LATE_OK.get(module, set()) or cli
            if _floor(target) > _floor(module) and not allowed_late:
                upward.append(f"{module} -> {target}")
            if is_late and not allowed_late:
                late.append(f"{module} -> {target}")
    assert not upward, f"imports that run up a floor: {upward}"
    assert not late, f"late imports without a reason (only the CLI and LATE_OK may): {late}"


def test_no_module_imports_a_private_name_from_another():
    private = []
    for module, path in sorted(MODULES.items()):
        for target, name, _ in _imports(path):
            last = name.rpartition(".")[2]
            if target and target != module and last.startswith("_") and not last.startswith("__"):
                private.append(f"{module} imports {name} from {target}")
        text = path.read_text()
        # attribute access to a private helper of an imported module (``g._device(model)``)
        for alias in re.findall(r"^from circuitkit[\w.]* import (\w+) as (\w+)$", text, flags=re.M):
            if re.search(rf"\b{alias[1]}\._[a-z]", text):
                private.append(f"{module} uses a private name of {alias[0]}")
    assert not private, private


# One home per idea: each pattern may appear in its home module only.
ONE_HOME = [
    ("a list of ablation kinds", r"\(\s*\"(zero|mean|resample|corrupted)\",\s*\"(zero|mean|resample|corrupted)\"", "circuitkit/ablation/kinds.py"),
    ("a resample derangement", r"torch\.randint\(1,", "circuitkit/ablation/kinds.py"),
    ("a temp-file-then-rename writer", r"tempfile\.mkstemp|os\.replace\(|\.replace\(target\)", "circuitkit/atomic.py"),
    ("a hand-built hook name", r"[\"']blocks\.(\{[^}]*\}|\d+)\.(attn\.)?hook_", "circuitkit/names.py"),
    ("the zoo: prefix", r"\"zoo:\"", "circuitkit/models/loading.py"),
    ("a KL divergence", r"F\.kl_div\(|functional\.kl_div\(", "circuitkit/tasks/metrics.py"),
    ("a range check of heads", r"\.head\s*<\s*\w", "circuitkit/names.py"),
]


@pytest.mark.parametrize("idea, pattern, home", ONE_HOME, ids=[i[0] for i in ONE_HOME])
def test_each_idea_has_one_home(idea, pattern, home):
    places = sorted(str(path.relative_to(PACKAGE.parent)) for path in MODULES.values()
                    if re.search(pattern, path.read_text()))
    assert places == [home], f"{idea} appears in {places}; keep it in {home} and call that"


def _differences_divided(source: str) -> list[int]:
    """Lines computing ``(a - b) / (c - d)``: a normalization between two reference values."""
    tree = ast.parse(source)
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
            and isinstance(node.left, ast.BinOp) and isinstance(node.left.op, ast.Sub)
            and isinstance(node.right, ast.BinOp) and isinstance(node.right.op, ast.Sub)]


def test_one_normalization():
    assert _differences_divided("x = (m - lo) / (hi - lo)") == [1]  # the detector sees the re-derived form
    places = {str(path.relative_to(PACKAGE.parent)): lines for path in MODULES.values()
              if (lines := _differences_divided(path.read_text()))}
    assert not places, f"(m - corrupted) / (clean - corrupted) computed in {places}; call circuitkit.tasks.metrics.normalized"


def test_no_package_attribute_shadows_its_own_submodule():
    """``import circuitkit.a.b`` and ``circuitkit.a.b`` are the same module: no package imports a
    name that is also one of its submodules unless it is that submodule (read from the files)."""
    shadowed = []
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            for alias in node.names:
                child = f"{module}.{alias.asname or alias.name}"
                if child in MODULES and f"{node.module}.{alias.name}" != child:
                    shadowed.append(f"{child} (bound to {node.module}.{alias.name})")
    assert not shadowed, f"package attributes that shadow their own submodule: {shadowed}"


def test_every_package_lists_its_public_names_and_the_top_level_has_one_export_list():
    import circuitkit

    missing = [m for m, p in MODULES.items() if p.name == "__init__.py" and "__all__" not in p.read_text()]
    assert not missing, f"packages without __all__: {missing}"
    assert set(circuitkit.__all__) == set(circuitkit._EXPORTS) | {"__version__"}
    for name in circuitkit.__all__:
        assert getattr(circuitkit, name) is not None


def test_the_command_line_lists_no_choices_of_its_own():
    """Methods, scores, formats, architectures, executors, ablations: every ``choices=`` of the CLI
    is read from the module that owns the list, never written out in the CLI."""
    literal = re.compile(r"choices\s*=\s*[\[(]\s*[\"']")
    places = [f"{path.name}:{n}" for module, path in MODULES.items() if module.startswith("circuitkit.cli")
              for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not places, f"CLI choices written out by hand: {places}"


def test_docstrings_use_markdown_not_sphinx_roles():
    """The API reference (mkdocstrings, Google style) renders Markdown: a ``:func:`x``` would show raw."""
    role = re.compile(r":(func|class|mod|meth|data|attr|exc|obj):`")
    places = [f"{module}:{n}" for module, path in MODULES.items()
              for n, line in enumerate(path.read_text().splitlines(), 1) if role.search(line)]
    assert not places, f"Sphinx roles in docstrings: {places[:10]}"
