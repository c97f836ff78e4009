"""The zoo's store: bundled models, each a folder ``data/zoo/NAME/`` holding

* ``card.json``      — architecture config, tokenizer file, task builder + parameters, training
                       recipe and seed, recorded accuracy, the reference circuit and its evidence;
* ``model.safetensors`` — the weights (never pickles);
* ``tokenizer.json`` — a Hugging Face fast tokenizer.

The top-level ``data/`` folder is installed as the package ``circuitkit.data`` (``setup.py`` maps
it), so a wheel carries the bundled models and they are read through `importlib.resources`.
Folders are searched in this order (the first holding a name wins): ``CIRCUITKIT_ZOO_PATH``
(``os.pathsep``-separated), the user's zoo folder (`user_zoo_dir`, where ``zoo train``
writes), the bundled models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from circuitkit.atomic import folder_written
from circuitkit.errors import InputError, InputTypeError, MissingFileError, UnknownNameError
from circuitkit.tokenizers import load_tokenizer_file

# torch and the task builders are imported where used: listing and reading cards (`zoo list`,
# `zoo show`) needs neither, and stays fast.

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CARD_VERSION = 1

BUNDLED_ZOO = Path(str(resources.files("circuitkit.data") / "zoo"))


ZOO_SAE_DIR = "saes"  # where a zoo model's folder keeps the SAEs it ships with


def user_zoo_dir() -> Path:
    """Where ``zoo train`` writes by default: ``$CIRCUITKIT_HOME/zoo``, else the user's data folder
    (``$XDG_DATA_HOME/circuitkit/zoo``, ``~/.local/share/circuitkit/zoo``); never the installed package."""
    home = os.environ.get("CIRCUITKIT_HOME")
    if home:
        return Path(home).expanduser() / "zoo"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data).expanduser() / "circuitkit" / "zoo"


@dataclass
class ZooCard:
    """What a bundled model is, what it does, and its known circuit.

    Examples:
        >>> import circuitkit as ck
        >>> card = ck.zoo_card("induction-handbuilt")
        >>> card.construction, card.accuracy
        ('hand-built', 1.0)
        >>> card.circuit_nodes
        ['input', 'a0.h0', 'a1.h0', 'logits']
        >>> card.task["builder"], card.task["metric"]
        ('induction', 'logit_diff')
    """

    name: str
    description: str
    config: dict[str, Any]
    task: dict[str, Any]  # {"builder": "induction", "params": {...}, "metric": "logit_diff"}
    construction: str = "trained"  # "hand-built" or "trained"
    recipe: dict[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    circuit: dict[str, list[str]] = field(default_factory=lambda: {"nodes": [], "edges": []})
    evidence: dict[str, Any] = field(default_factory=dict)
    version: int = CARD_VERSION
    path: Path | None = None

    @property
    def circuit_nodes(self) -> list[str]:
        return list(self.circuit.get("nodes", []))

    @property
    def circuit_edges(self) -> list[str]:
        return list(self.circuit.get("edges", []))

    @property
    def saes(self) -> dict[str, Path]:
        """The SAEs this model ships with: hook name -> folder (``saes/<hook>/``, SAELens format),
        each loadable as ``load_sae("zoo:NAME/HOOK")``."""
        root = Path(self.path) / ZOO_SAE_DIR if self.path is not None else None
        if root is None or not root.is_dir():
            return {}
        return {d.name: d for d in sorted(root.iterdir()) if (d / "cfg.json").exists()}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> ZooCard:
        if data.get("version") != CARD_VERSION:
            raise InputError(f"zoo card {path} has version {data.get('version')!r}; this circuitkit reads version {CARD_VERSION}")
        missing = [k for k in ("name", "description", "config", "task") if k not in data]
        if missing:
            raise InputError(f"zoo card {path} lacks {missing}; re-create it with `circuitkit zoo train NAME`")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"}
        return cls(**known, path=path)


def zoo_dirs() -> list[Path]:
    """The folders searched for zoo models, first match wins."""
    extra = [Path(p) for p in os.environ.get("CIRCUITKIT_ZOO_PATH", "").split(os.pathsep) if p]
    return [*extra, user_zoo_dir(), BUNDLED_ZOO]


def empty_zoo_reason() -> str:
    """Why `list_zoo` finds nothing, and the fix."""
    searched = ", ".join(str(d) for d in zoo_dirs())
    bundled = "is missing" if not BUNDLED_ZOO.is_dir() else "holds no model cards"
    return (f"no zoo models found in {searched}: the bundled folder {BUNDLED_ZOO} {bundled}. Reinstall "
            "circuitkit from a wheel or checkout that ships data/zoo, or point CIRCUITKIT_ZOO_PATH at a zoo folder")


def list_zoo() -> list[ZooCard]:
    """Every model found on the zoo path (first folder wins on a name clash).

    Examples:
        >>> import circuitkit as ck
        >>> cards = {card.name: card for card in ck.list_zoo()}
        >>> "induction-handbuilt" in cards
        True
        >>> cards["induction-handbuilt"].description
        'hand-built 2-layer attn-only induction: a0.h0 previous-token head, a1.h0 induction head ...'
    """
    cards: dict[str, ZooCard] = {}
    for root in zoo_dirs():
        if not root.is_dir():
            continue
        for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
            card = _read_card(card_path)
            cards.setdefault(card.name, card)
    return sorted(cards.values(), key=lambda c: c.name)


def _read_card(card_path: Path) -> ZooCard:
    try:
        data = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"zoo card {card_path} is not valid JSON ({exc}); re-create it with `circuitkit zoo train`") from None
    return ZooCard.from_json(data, path=card_path.parent)


def zoo_card(name: str) -> ZooCard:
    """The card of the zoo model `name`: what it is, its task and its known circuit
    (`KeyError`, naming the zoo's models, when there is none).

    Examples:
        >>> import circuitkit as ck
        >>> card = ck.zoo_card("induction-handbuilt")
        >>> card.name, card.config["n_layers"], card.config["n_heads"]
        ('induction-handbuilt', 2, 4)
        >>> card.circuit_edges[:3]
        ['input->a0.h0<q>', 'input->a0.h0<k>', 'input->a0.h0<v>']
    """
    for root in zoo_dirs():
        card_path = root / name / CARD_FILE
        if card_path.exists():
            return _read_card(card_path)
    available = [c.name for c in list_zoo()]
    raise UnknownNameError(f"no zoo model named {name!r}; available: {available} (see `circuitkit zoo list`)")


def zoo_tokenizer(card: ZooCard):
    tok_path = card.path / TOKENIZER_FILE
    if not tok_path.exists():
        raise MissingFileError(f"zoo model {card.name!r} has no {TOKENIZER_FILE} in {card.path}")
    return load_tokenizer_file(tok_path, name=card.name)


def model_from_config(config: dict[str, Any], tokenizer=None, device: str = "cpu", dtype=None):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    dtype = torch.float32 if dtype is None else dtype
    cfg = HookedTransformerConfig(**{**config, "device": device, "dtype": dtype})
    return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)


def load_zoo_model(name: str, device: str = "cpu", dtype=None):
    """Build the HookedTransformer of zoo model ``name`` and load its safetensors weights."""
    from safetensors.torch import load_file

    card = zoo_card(name)
    weights = card.path / WEIGHTS_FILE
    if not weights.exists():
        raise MissingFileError(
            f"zoo model {name!r} has a card but no weights at {weights}; run `circuitkit zoo train {name}`"
        )
    model = model_from_config(card.config, zoo_tokenizer(card), device=device, dtype=dtype)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:
        raise InputError(f"cannot read {weights}: {exc}; the file is corrupt, re-create it with `circuitkit zoo train {name}`") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Buffers (masks, rotary tables) are rebuilt from the config; weights must all be there.
    missing = [k for k in missing if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))]
    if missing or unexpected:
        raise InputError(f"weights of zoo model {name!r} do not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model


def zoo_task(name_or_card: str | ZooCard, model=None, **overrides):
    """The card's task, built with the model's tokenizer (parameters overridable).

    Examples:
        >>> import circuitkit as ck
        >>> ck.zoo_task("induction-handbuilt")
        Task('induction', prompts=64, seq_len=20, metric='logit_diff')
        >>> ck.zoo_task("induction-handbuilt", n_prompts=8)  # the card's parameters, overridden
        Task('induction', prompts=8, seq_len=20, metric='logit_diff')
    """
    from circuitkit.tasks.builders import build_task

    card = zoo_card(name_or_card) if isinstance(name_or_card, str) else name_or_card
    tok = model if model is not None else zoo_tokenizer(card)
    params = {**card.task.get("params", {}), **overrides}
    if "metric" in card.task and "metric" not in params:
        params["metric"] = card.task["metric"]
    return build_task(card.task["builder"], tok, **params)


def save_zoo_model(model, card: ZooCard, tokenizer, root: Path | None = None,
                   extra: Callable[[Path], Any] | None = None) -> Path:
    """Write ``card.json``, ``model.safetensors`` and ``tokenizer.json`` atomically into ``root/NAME``
    (``root`` defaults to `user_zoo_dir`). ``extra(folder)`` writes anything else the model
    folder holds (its ``saes/``) into the unfinished folder, so all of it replaces the old one at once."""
    import torch
    from safetensors.torch import save_file

    root = Path(root) if root is not None else user_zoo_dir()
    final = root / card.name
    with folder_written(final) as tmp:
        state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model.state_dict().items()
                 if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))}
        save_file(state, str(tmp / WEIGHTS_FILE))
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
        (tmp / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2, default=_json_default) + "\n")
        if extra is not None:
            extra(tmp)
    card.path = final
    return final


def config_to_json(cfg) -> dict[str, Any]:
    """The HookedTransformerConfig fields needed to rebuild a model (JSON-safe)."""
    keep = ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab", "act_fn",
            "normalization_type", "attn_only", "positional_embedding_type", "rotary_dim", "n_key_value_heads",
            "model_name", "original_architecture", "tokenizer_prepends_bos", "default_prepend_bos",
            "attn_scale", "use_attn_scale", "d_vocab_out", "parallel_attn_mlp", "gated_mlp", "final_rms", "seed")
    # None is meaningful for these (no LayerNorm, no MLP); the config's defaults would differ.
    keep_none = ("normalization_type", "d_mlp")
    out = {}
    for key in keep:
        value = getattr(cfg, key, None)
        if value is not None or key in keep_none:
            out[key] = value
    return out


def _json_default(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise InputTypeError(f"cannot store {type(obj).__name__} in a zoo card")
