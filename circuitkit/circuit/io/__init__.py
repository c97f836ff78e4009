"""Export / import circuits without loss.

Formats: ``node-link`` (circuitkit's own JSON, networkx node-link data plus version fields),
``graphml`` and ``gexf`` (networkx readwrite), ``mib`` (the circuit JSON of EAP-IG and the
Mechanistic Interpretability Benchmark: ``cfg`` / ``nodes`` / ``edges``) and
``attribution-graph`` (circuit-tracer's JSON, opened by Neuronpedia's graph viewer: ``metadata``
/ ``qParams`` / ``nodes`` / ``links``). Files are written to a temp file and renamed, and are
fully serialised before anything is written, so a failing export leaves nothing behind.

One module per format (`nodelink`, `graphml`,
`mib`, `attribution_graph`); this module
picks one by name, suffix or keys.
"""

from __future__ import annotations

import json
import os
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
from circuitkit.circuit.io.nodelink import from_node_link, to_node_link
from circuitkit.errors import InputError, MissingFileError

FORMATS = ("node-link", "graphml", "gexf", "mib", "attribution-graph")

_SUFFIX = {".graphml": "graphml", ".gexf": "gexf"}

def _serialise(circuit: Circuit, fmt: str, options: dict[str, Any]) -> bytes:
    if options and fmt not in ("mib", "attribution-graph"):
        raise InputError(f"the {fmt} format takes no options, got {sorted(options)}; options are for 'mib' "
                         "(sign, scores, dangling, d_model) and 'attribution-graph' (prompt_tokens, ...)")
    if fmt == "node-link":
        return (json.dumps(to_node_link(circuit), indent=1) + "\n").encode()
    if fmt == "graphml":
        return to_graphml(circuit)
    if fmt == "gexf":
        return to_gexf(circuit)
    if fmt == "mib":
        return (json.dumps(to_mib(circuit, **options), indent=1) + "\n").encode()
    if fmt == "attribution-graph":
        return (json.dumps(to_attribution_graph(circuit, **options)) + "\n").encode()
    raise InputError(f"unknown circuit format {fmt!r}; choose one of {FORMATS}")

def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"unknown circuit format {fmt!r}; choose one of {FORMATS}")
        return fmt
    return _SUFFIX.get(path.suffix.lower(), "json")

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
    fmt = _format_for(path, format)
    if fmt == "attribution-graph":  # the viewer loads graph_data/{slug}.json and lists graph-metadata.json
        graph = to_attribution_graph(circuit, **{"slug": path.stem, **options})
        payload = (json.dumps(graph) + "\n").encode()
        written = write_bytes(path, payload)
        update_index(path.parent, graph)
        return written
    payload = _serialise(circuit, "node-link" if fmt == "json" else fmt, options)
    return write_bytes(path, payload)

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
    fmt = _format_for(path, format)
    raw = path.read_bytes()
    where = str(path)
    if fmt == "graphml":
        return from_graphml(raw, where)
    if fmt == "gexf":
        return from_gexf(raw, where)
    try:
        data = json.loads(raw, parse_constant=lambda name: _non_finite(name, where))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} is not valid JSON ({exc}); give a circuit file written by circuitkit, EAP-IG or circuit-tracer") from None
    if fmt == "json":
        fmt = _sniff(data, where)
    if fmt == "node-link":
        return from_node_link(data, where)
    if fmt == "mib":
        return from_mib(data, where)
    return from_attribution_graph(data, where)

def _non_finite(name: str, where: str):
    # json accepts NaN / Infinity, which are not JSON and no score can be; refuse them when read.
    raise InputError(f"{where} holds {name}, which is not a number a circuit score can be; fix or drop that "
                     "score in the file (circuitkit never writes one)")


def _sniff(data: Any, where: str) -> str:
    if isinstance(data, dict):
        if "format" in data or "format_version" in data:
            return "node-link"
        if {"metadata", "nodes", "links"} <= set(data):
            return "attribution-graph"
        if {"nodes", "edges"} <= set(data):
            return "mib"
    raise InputError(f"{where} is no known circuit format: expected circuitkit node-link JSON (format/format_version), "
                     "EAP-IG/MIB JSON (cfg/nodes/edges) or an attribution graph (metadata/nodes/links)")

def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, src_format: str | None = None,
            **options: Any) -> Path:
    """Read ``src`` and write it as ``to`` (nothing is written if ``src`` cannot be read);
    ``options`` as for `save_circuit`."""
    if to not in FORMATS:
        raise InputError(f"unknown export format {to!r}; choose one of {FORMATS}")
    return save_circuit(load_circuit(src, src_format), dst, to, **options)


__all__ = ["EDGE_ATTRS", "FORMATS", "FORMAT_VERSION", "NODE_ATTRS", "convert", "example_prompt", "from_attribution_graph",
           "from_mib", "from_node_link", "load_circuit", "save_circuit", "to_attribution_graph", "to_mib",
           "to_node_link", "update_index"]
