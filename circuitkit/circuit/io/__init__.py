"""Export / import circuits without loss.

Formats: ``node-link`` (circuitkit's own JSON, networkx node-link data plus version fields),
``graphml`` and ``gexf`` (networkx readwrite), ``mib`` (the circuit JSON of EAP-IG and the
Mechanistic Interpretability Benchmark: ``cfg`` / ``nodes`` / ``edges``) and
``attribution-graph`` (circuit-tracer's JSON, opened by Neuronpedia's graph viewer: ``metadata``
/ ``qParams`` / ``nodes`` / ``links``). Files are written to a temp file and renamed, and are
fully serialised before anything is written, so a failing export leaves nothing behind.

One module per format (`nodelink`, `graphml`,
`mib`, `attribution_graph`); this module
picks one by name, suffix or keys. `mib_folder` writes a whole MIB circuit-track submission
folder (`mib_submission`) of `mib` files.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitkit.atomic import write_bytes
from circuitkit.circuit.core import EDGE_ATTRS, NODE_ATTRS, Circuit
from circuitkit.circuit.io.attribution_graph import (
    example_prompt,
    from_attribution_graph,
    to_attribution_graph,
    update_index,
)
from circuitkit.circuit.io.common import FORMAT_VERSION
from circuitkit.circuit.io.graphml import from_gexf, from_graphml, to_gexf, to_graphml
from circuitkit.circuit.io.mib import from_mib, to_mib
from circuitkit.circuit.io.mib_folder import (
    MIB_MODELS,
    MIB_PAIRS,
    MIB_PERCENTAGES,
    MIB_TASKS,
    check_mib_submission,
    mib_circuits,
    mib_submission,
)
from circuitkit.circuit.io.nodelink import from_node_link, to_node_link
from circuitkit.errors import InputError, MissingFileError


@dataclass(frozen=True)
class CircuitFormat:
    """One circuit file format: how it is written and read, the suffixes that name it, and (for
    JSON flavours) the top-level keys that recognise it. ``options``: the keyword arguments its
    writer takes (read from the writer's signature)."""

    name: str
    write: Callable[..., bytes]
    read: Callable[[Any, str], Circuit]
    suffixes: tuple[str, ...] = ()
    json: bool = False
    recognise: Callable[[dict], bool] | None = None
    options: tuple[str, ...] = field(default=())


CIRCUIT_FORMATS: dict[str, CircuitFormat] = {}


def register_format(name: str, write: Callable[..., Any], read: Callable[[Any, str], Circuit], *,
                    suffixes: tuple[str, ...] = (), json_flavour: bool = False,
                    recognise: Callable[[dict], bool] | None = None) -> CircuitFormat:
    """Add a format to `CIRCUIT_FORMATS`. ``write(circuit, **options)`` returns the file's
    bytes, or a JSON-able dict for a JSON flavour; ``read(raw bytes or parsed JSON, where)``."""
    options = tuple(p for p in list(inspect.signature(write).parameters)[1:])
    if json_flavour:
        def as_bytes(circuit, _write=write, **opts):
            return (json.dumps(_write(circuit, **opts), indent=1) + "\n").encode()
    else:
        as_bytes = write
    fmt = CircuitFormat(name, as_bytes, read, suffixes, json_flavour, recognise, options)
    CIRCUIT_FORMATS[name] = fmt
    return fmt


register_format("node-link", to_node_link, from_node_link, suffixes=(".json",), json_flavour=True,
                recognise=lambda data: "format" in data or "format_version" in data)
register_format("graphml", to_graphml, from_graphml, suffixes=(".graphml",))
register_format("gexf", to_gexf, from_gexf, suffixes=(".gexf",))
register_format("mib", to_mib, from_mib, json_flavour=True, recognise=lambda data: {"nodes", "edges"} <= set(data))
register_format("attribution-graph", to_attribution_graph, from_attribution_graph, json_flavour=True,
                recognise=lambda data: {"metadata", "nodes", "links"} <= set(data))
FORMATS = tuple(CIRCUIT_FORMATS)


def _format(fmt: str) -> CircuitFormat:
    if fmt not in CIRCUIT_FORMATS:
        raise InputError(f"unknown circuit format {fmt!r}; choose one of {FORMATS}")
    return CIRCUIT_FORMATS[fmt]


def _format_for_writing(path: Path, fmt: str | None) -> CircuitFormat:
    if fmt is not None:
        return _format(fmt)
    suffix = path.suffix.lower()
    for candidate in CIRCUIT_FORMATS.values():
        if suffix in candidate.suffixes:
            return candidate
    known = sorted({s for f in CIRCUIT_FORMATS.values() for s in f.suffixes})
    raise InputError(f"cannot tell a circuit format from the suffix {suffix or '(none)'!r} of {path}; name the file "
                     f"{', '.join(known)} (node-link JSON, GraphML, GEXF) or pass a format: one of {FORMATS}")


def check_circuit_path(path: str | os.PathLike, format: str | None = None) -> CircuitFormat:
    """The format `save_circuit` would write ``path`` in; ``InputError`` (before any work) when
    neither ``format`` nor the suffix names one, or when the suffix names another format than
    ``format`` (``--to graphml --out c.json``, ``--to node-link --out c.txt``)."""
    path = Path(path)
    fmt = _format_for_writing(path, format)
    suffix = path.suffix.lower()
    own = fmt.suffixes or ((".json",) if fmt.json else ())
    if format is not None and own and suffix not in own:
        raise InputError(f"a {fmt.name} circuit is written as {' / '.join(own)}, but the output {path} ends in "
                         f"{suffix or '(no suffix)'!r}; name it {path.stem}{own[0]}")
    return fmt


def save_circuit(circuit: Circuit, path: str | os.PathLike, format: str | None = None, **options: Any) -> Path:
    """Write ``circuit`` to ``path``; ``format`` defaults from the suffix (``.graphml``, ``.gexf``,
    else node-link JSON). ``options`` go to `to_mib` / `to_attribution_graph`.
    An attribution graph takes its slug from the file name and is also listed in
    ``graph-metadata.json`` next to it (circuit-tracer's viewer reads that index).

    Examples:
        >>> import os, tempfile
        >>> import circuitkit as ck
        >>> circuit = ck.reference_circuit("induction-handbuilt")
        >>> path = ck.save_circuit(circuit, os.path.join(tempfile.mkdtemp(), "induction.graphml"))
        >>> path.name, ck.load_circuit(path).edges == circuit.edges
        ('induction.graphml', True)
    """
    path = Path(path)
    fmt = _format_for_writing(path, format)
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        takes = ", ".join(fmt.options) or "no options"
        raise InputError(f"the {fmt.name} format takes no {unknown}; it takes {takes}")
    if fmt.name == "attribution-graph":  # the viewer loads graph_data/{slug}.json and lists graph-metadata.json
        graph = to_attribution_graph(circuit, **{"slug": path.stem, **options})
        written = write_bytes(path, (json.dumps(graph) + "\n").encode())
        update_index(path.parent, graph)
        return written
    return write_bytes(path, fmt.write(circuit, **options))


def load_circuit(path: str | os.PathLike, format: str | None = None) -> Circuit:
    """Read a circuit file of any supported format (JSON flavours are recognised by their keys).

    Examples:
        >>> import os, tempfile
        >>> import circuitkit as ck
        >>> circuit = ck.reference_circuit("induction-handbuilt")
        >>> path = ck.save_circuit(circuit, os.path.join(tempfile.mkdtemp(), "induction.json"))
        >>> loaded = ck.load_circuit(path)
        >>> loaded == circuit, loaded.edges == circuit.edges
        (True, True)
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no circuit file at {path}")
    where = str(path)
    if format is not None:
        fmt = _format(format)
    else:  # a binary format by its suffix, else a JSON flavour recognised by its keys
        fmt = next((f for f in CIRCUIT_FORMATS.values() if not f.json and path.suffix.lower() in f.suffixes), None)
    raw = path.read_bytes()
    if fmt is not None and not fmt.json:
        return fmt.read(raw, where)
    try:
        data = json.loads(raw, parse_constant=lambda name: _non_finite(name, where))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} is not valid JSON ({exc}); give a circuit file written by circuitkit, EAP-IG or "
                         "circuit-tracer") from None
    return (fmt or _sniff(data, where)).read(data, where)


def _non_finite(name: str, where: str):
    # json accepts NaN / Infinity, which are not JSON and no score can be; refuse them when read.
    raise InputError(f"{where} holds {name}, which is not a number a circuit score can be; fix or drop that "
                     "score in the file (circuitkit never writes one)")


def _sniff(data: Any, where: str) -> CircuitFormat:
    if isinstance(data, dict):
        for fmt in CIRCUIT_FORMATS.values():
            if fmt.json and fmt.recognise is not None and fmt.recognise(data):
                return fmt
    raise InputError(f"{where} is no known circuit format: expected circuitkit node-link JSON (format/format_version), "
                     "EAP-IG/MIB JSON (cfg/nodes/edges) or an attribution graph (metadata/nodes/links)")


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, src_format: str | None = None,
            **options: Any) -> Path:
    """Read ``src`` and write it as ``to`` (nothing is written if ``src`` cannot be read);
    ``options`` as for `save_circuit`."""
    _format(to)
    return save_circuit(load_circuit(src, src_format), dst, to, **options)


__all__ = ["MIB_MODELS", "MIB_PAIRS", "MIB_PERCENTAGES", "MIB_TASKS", "check_mib_submission", "mib_circuits",
           "mib_submission", "CIRCUIT_FORMATS", "CircuitFormat", "EDGE_ATTRS", "FORMATS", "register_format", "FORMAT_VERSION", "NODE_ATTRS", "check_circuit_path", "convert", "example_prompt", "from_attribution_graph",
           "from_mib", "from_node_link", "load_circuit", "save_circuit", "to_attribution_graph", "to_mib",
           "to_node_link", "update_index"]
