"""The discovery methods, one registered record each.

A record names the function that runs the method, the hyper-parameters a user may set with their
one default, and what it can do (position-resolved scores; pruning by itself, as ACDC does).
`discover`, the command line (``--method``,
``--method-arg KEY=VALUE``), studies and the tests all read `DISCOVERY_METHODS`, so a new
method is one function and one `register` call. A hyper-parameter the method does not take
is an error, never ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from circuitkit import attribution
from circuitkit.circuit.discovery.acdc_search import acdc
from circuitkit.circuit.discovery.ensembles import eap_ig_pruning, ensemble_mean
from circuitkit.circuit.discovery.mask_learning import edge_pruning
from circuitkit.errors import InputError

__all__ = ["DISCOVERY_METHODS", "DiscoveryMethod", "check_method_args", "discovery_method", "register"]

# Arguments every method receives from discover itself, never from method_args.
_SUPPLIED = frozenset({"model", "task", "ablation", "progress", "by_pos", "source", "edges", "level", "threshold"})


@dataclass(frozen=True)
class DiscoveryMethod:
    """One discovery method.

    ``function(model, task, *, ablation, progress, source, **params)`` returns edge ``Scores``
    (or, where ``prunes``, a ``Circuit``: ACDC, whose ``threshold`` is its tau). ``params``: the
    hyper-parameters a user may set, each with its default (read from the function's signature
    unless overridden at registration).
    """

    name: str
    function: Callable
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)
    by_pos: bool = False
    prunes: bool = False
    # how its scores rank: "circuitkit" (m(edge ablated) - m(clean): needed edges negative) or
    # "mib" (higher = more needed, as edge pruning's open shares); faithfulness_curve's ``sign``
    sign: str = "circuitkit"

    def describe(self) -> str:
        """``name: summary (param=default, ...)`` for help texts."""
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}: {self.summary}" + (f" ({shown})" if shown else "")


DISCOVERY_METHODS: dict[str, DiscoveryMethod] = {}


def register(name: str, function: Callable, summary: str, *, params: tuple[str, ...],
             defaults: Mapping[str, Any] | None = None, by_pos: bool = False, prunes: bool = False,
             sign: str = "circuitkit") -> DiscoveryMethod:
    """Add a method to `DISCOVERY_METHODS`: ``params`` are the keyword arguments of
    ``function`` a user may set; their defaults are the function's own unless ``defaults`` says
    otherwise (the value ``discover`` has always used)."""
    signature = inspect.signature(function).parameters
    unknown = [p for p in params if p not in signature or p in _SUPPLIED]
    if unknown:
        raise InputError(f"{name}: {function.__name__} has no user parameter {unknown}")
    defaults = dict(defaults or {})
    values = {p: defaults.pop(p) if p in defaults else signature[p].default for p in params}
    if defaults:
        raise InputError(f"{name}: defaults {sorted(defaults)} are not among its params {params}")
    method = DiscoveryMethod(name, function, summary, values, by_pos, prunes, sign)
    DISCOVERY_METHODS[name] = method
    return method


def discovery_method(name: str) -> DiscoveryMethod:
    """The registered method ``name``; ``ValueError`` listing them otherwise."""
    if name not in DISCOVERY_METHODS:
        raise InputError(f"unknown discovery method {name!r}; choose one of {tuple(DISCOVERY_METHODS)}")
    return DISCOVERY_METHODS[name]


def check_method_args(method: DiscoveryMethod, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` checked against ``method``'s parameters: every name known, every value of its
    default's type (an int where a float is expected is fine; a parameter defaulting to None takes
    a number). Returns the full set, defaults filled in."""
    unknown = sorted(set(args) - set(method.params))
    if unknown:
        takes = ", ".join(method.params) or "no parameters"
        raise InputError(f"discovery method {method.name!r} takes no {unknown}; it takes {takes}")
    out = dict(method.params)
    for key, value in args.items():
        default = method.params[key]
        if default is None:
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise InputError(f"discovery method {method.name!r}: {key} must be like its default {default!r}, "
                             f"got {value!r} ({type(value).__name__})")
        out[key] = value
    return out


register("eap-ig", attribution.eap_ig, "EAP with integrated gradients (Hanna et al. 2024)",
         params=("steps", "interpolate", "qk_fix", "batch_size", "max_memory"), defaults={"steps": 10}, by_pos=True)
register("eap", attribution.eap, "edge attribution patching, one forward + backward",
         params=("qk_fix", "batch_size", "max_memory"), by_pos=True)
register("exact", attribution.exact_edge_patching, "each edge ablated alone, exactly",
         params=("batch_size", "max_memory"), by_pos=True)
register("edge-pruning", edge_pruning, "a learned edge mask (Bhaskar et al. 2024)",
         params=("steps", "lr", "sparsity", "batch_size", "anneal", "price_step", "objective", "target_edges", "seed"),
         sign="mib")
register("acdc", acdc, "greedy pruning from the logits back (Conmy et al. 2023); --threshold is its tau",
         params=("metric", "seed"), prunes=True, sign="mib")
register("ensemble-mean", ensemble_mean, "mean of EAP, EAP-IG-inputs and EAP-IG-activations, each scaled to max |score| 1 "
         "(MIB shared task's parallel ensemble)", params=("members", "steps"), by_pos=False)
register("eap-ig-pruning", eap_ig_pruning, "edge pruning warm-started from EAP-IG's ranking (MIB shared task's "
         "sequential ensemble)", params=("ig_steps", "steps", "lr", "sparsity", "batch_size", "seed", "spread"), sign="mib")
register("relp", attribution.relp, "relevance patching: EAP with LRP's backward rules (Jafari et al. 2025)",
         params=("batch_size", "max_memory"), by_pos=True)
