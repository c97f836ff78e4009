"""Export retrieval-head scores or a RazorAttention split for NVIDIA's kvpress.

kvpress's ``DuoAttentionPress`` reads DuoAttention's attention-pattern folder (as in
``mit-han-lab/duo-attention/attn_patterns/<model>/<run>/``): ``config.json`` with ``sink_size`` and
``recent_size``, and ``full_attention_heads.tsv``, one row per layer and one tab-separated column
per key / value head, each a gate in [0, 1] (1: the head needs the full cache). The press clips
the gates to [0, 1] and streams the ``round(n * head_compression_ratio)`` lowest; the streamed
heads keep ``sink_size`` first and ``recent_size`` last tokens.

`export_kvpress_duo` writes that folder from head `Scores` (averaged per key / value group, then
scaled to [0, 1] monotonically, so the press streams the lowest-scoring groups first) or from a
`KVPolicy` (1 for groups kept in full, 0 for streamed ones; ``config.json`` then also records
``head_compression_ratio``, the share of streamed groups, which makes the press stream exactly
the policy's heads). The folder is written atomically.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from circuitkit import names
from circuitkit.atomic import folder_written
from circuitkit.errors import InputError, InputTypeError
from circuitkit.heads.kv import HeadBudgetPolicy, KVPolicy
from circuitkit.scores import Scores

__all__ = ["export_kvpress_duo", "read_kvpress_duo"]

CONFIG = "config.json"
HEADS = "full_attention_heads.tsv"


def _gates(scores_or_policy, model) -> tuple[np.ndarray, dict]:
    if isinstance(scores_or_policy, HeadBudgetPolicy):
        raise InputTypeError("DuoAttention's format holds one full / streaming gate per key / value head, not per-head "
                             "token budgets; export a KVPolicy or head Scores instead")
    if isinstance(scores_or_policy, KVPolicy):
        if model is None:
            raise InputError("exporting a KVPolicy needs the model (its layers and key / value heads): "
                             "export_kvpress_duo(policy, path, model)")
        policy = scores_or_policy
        policy.check(model)
        n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
        group = model.cfg.n_heads // n_kv
        gates = np.array([[1.0 if names.head(layer, g * group) in policy.full else 0.0 for g in range(n_kv)]
                          for layer in range(model.cfg.n_layers)])
        extra = {"sink_size": policy.sink, "recent_size": policy.window,
                 "head_compression_ratio": float((gates == 0).mean()), "compensation_token": policy.compensate}
        return gates, extra
    if not isinstance(scores_or_policy, Scores):
        raise InputTypeError(f"pass head Scores or a KVPolicy, got {type(scores_or_policy).__name__}")
    shape = (model.cfg.n_layers, model.cfg.n_heads) if model is not None else (None, None)
    grid = scores_or_policy.head_grid(*shape).float()
    if model is not None:
        n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
        grid = grid.reshape(grid.shape[0], n_kv, -1).mean(-1)
    if not torch.isfinite(grid).all():
        raise InputError("the scores have NaN or infinite entries; every head needs a finite score to be exported")
    spread = float(grid.max() - grid.min())  # scaled onto [0, 1], order kept
    gates = ((grid - grid.min()) / spread if spread > 0 else torch.ones_like(grid)).numpy().astype(np.float64)
    return gates, {"scores_method": scores_or_policy.method}


def export_kvpress_duo(scores_or_policy: Scores | KVPolicy, path: str | os.PathLike, model=None, *,
                       sink_size: int | None = None, recent_size: int | None = None) -> Path:
    """Write a DuoAttention attention-pattern folder (``config.json`` + ``full_attention_heads.tsv``)
    that kvpress's ``DuoAttentionPress`` loads; returns the folder.

    ``model`` gives the layers and key / value heads (needed for a `KVPolicy` and for
    grouped-query attention; without it head Scores are read one column per head).
    ``sink_size`` / ``recent_size`` override the policy's ``sink`` / ``window`` (for Scores they
    default to DuoAttention's 128 / 256).

    Examples:
        >>> import tempfile, circuitkit as ck
        >>> from circuitkit.heads.kv import KVPolicy
        >>> from circuitkit.heads.kvpress import export_kvpress_duo, read_kvpress_duo
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> folder = export_kvpress_duo(KVPolicy.razor(model, ["a1.h0"], 4, 16), tempfile.mkdtemp() + "/duo", model)
        >>> gates, sink, recent = read_kvpress_duo(folder)
        >>> gates.tolist(), sink, recent
        ([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], 4, 16)
    """
    gates, extra = _gates(scores_or_policy, model)
    config = {"sink_size": 128, "recent_size": 256, **extra}
    for key, value in (("sink_size", sink_size), ("recent_size", recent_size)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{key} must be a whole number of tokens >= 0, got {value!r}")
            config[key] = value
    if config["recent_size"] < 1:
        raise InputError("recent_size must be >= 1 (a streamed head keeps at least the current token)")
    if model is not None:
        config["model_name"] = model.cfg.model_name
    text = io.StringIO()
    np.savetxt(text, gates, delimiter="\t")  # DuoAttention's own format: "%.18e", one row per layer
    with folder_written(path) as tmp:
        (tmp / HEADS).write_text(text.getvalue())
        (tmp / CONFIG).write_text(json.dumps(config, indent=1))
    return Path(path)


def read_kvpress_duo(path: str | os.PathLike) -> tuple[np.ndarray, int, int]:
    """``(gates [layers, kv heads], sink_size, recent_size)`` as DuoAttention's ``load_attn_pattern``
    and kvpress read them (gates clipped to [0, 1])."""
    folder = Path(path)
    missing = [name for name in (CONFIG, HEADS) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} is not a DuoAttention pattern folder: {missing} missing; write one with "
                         "export_kvpress_duo")
    gates = np.clip(np.loadtxt(folder / HEADS, dtype=float, delimiter="\t", ndmin=2), 0, 1)
    config = json.loads((folder / CONFIG).read_text())
    return gates, int(config["sink_size"]), int(config["recent_size"])
