"""``load_model(spec)``: TransformerLens names, local Hugging Face directories, and ``zoo:NAME``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from circuitkit.errors import InputError, RunError, UnknownNameError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

from circuitkit.models import backend as backend_module
from circuitkit.models.zoo_store import load_zoo_model, zoo_card

log = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class ModelSpec:
    """What a model spec names: ``kind`` is ``"zoo"`` (``name`` = the zoo model), ``"dir"`` (a local
    Hugging Face directory, ``name`` = its path) or ``"name"`` (a TransformerLens model name)."""

    kind: Literal["zoo", "dir", "name"]
    name: str

    @property
    def zoo_name(self) -> str | None:
        return self.name if self.kind == "zoo" else None


def zoo_sae_folder(spec: str) -> Path:
    """The folder of ``zoo:NAME/HOOK`` (a shipped SAE); ``UnknownNameError`` listing the hooks that
    have one."""
    name, _, hook = spec.removeprefix(ZOO_PREFIX).partition("/")
    card = zoo_card(name)
    saes = card.saes
    if hook not in saes:
        have = ", ".join(f"{ZOO_PREFIX}{name}/{h}" for h in saes) or "none"
        raise UnknownNameError(f"zoo model {name!r} ships no SAE for {hook or '(no hook given)'!r}; it ships: {have}")
    return saes[hook]


def parse_spec(spec: str | os.PathLike) -> ModelSpec:
    """The one reader of model specs (``zoo:NAME``, a directory, a TransformerLens name).

    ``ModelLoadError`` for a path-like spec with no directory behind it.
    """
    text = os.fspath(spec)
    if text.startswith(ZOO_PREFIX):
        return ModelSpec("zoo", text[len(ZOO_PREFIX):])
    if Path(text).expanduser().is_dir():
        return ModelSpec("dir", text)
    if os.sep in text or text.startswith((".", "~")):
        raise ModelLoadError(
            f"no model directory at {text!r}; pass an existing Hugging Face model directory, "
            "a TransformerLens model name (e.g. 'gpt2-small') or 'zoo:NAME' (see `circuitkit zoo list`)"
        )
    return ModelSpec("name", text)


class ModelLoadError(RunError):
    """A model could not be loaded; the message says why and how to fix it.

    Examples:
        >>> import circuitkit as ck
        >>> try:
        ...     ck.load_model("./no-such-model-folder")
        ... except ck.ModelLoadError as error:
        ...     print(error)
        no model directory at './no-such-model-folder'; pass an existing Hugging Face model directory, ...
    """


BackendChoice = Literal["auto", "hooked", "bridge"]
BACKEND_CHOICES = ("auto", *backend_module.BACKENDS)
# Keyword arguments that place a large model over several devices (accelerate): a bridge's alone.
BRIDGE_PLACEMENT = ("device_map", "n_devices", "max_memory")


def load_model(
    spec: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    backend: BackendChoice = "auto",
    **kwargs,
):
    """Load a TransformerLens model: a ``HookedTransformer`` or a ``TransformerBridge``.

    ``spec`` is one of:
      * ``"zoo:NAME"`` — a bundled model (``circuitkit zoo list``);
      * a path to a local Hugging Face model directory (``config.json`` + weights, usually a tokenizer);
      * a TransformerLens pretrained name (``"gpt2-small"``, ``"pythia-70m"``...), loaded from the
        hub or the local Hugging Face cache.

    ``backend``: ``"hooked"`` — TransformerLens's ``HookedTransformer`` (weights folded and centred
    as TransformerLens does); ``"bridge"`` — TransformerLens's ``TransformerBridge`` around the Hugging
    Face model itself (its numbers are the Hugging Face model's; every family TransformerLens can
    boot); ``"auto"`` (default) — ``HookedTransformer`` where TransformerLens converts the
    architecture (the zoo, GPT-2, Pythia, Llama, Gemma-2/3 ...), the bridge otherwise. Every method
    takes either (`circuitkit.models.backend`).

    ``device`` defaults to CUDA when available. ``device_map``, ``n_devices`` and ``max_memory``
    spread a model larger than one device over several (Hugging Face accelerate; bridge only, so
    they select it under ``"auto"``). Other keyword arguments go to ``HookedTransformer``'s loader
    (``fold_ln`` ...).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> type(model).__name__, model.cfg.n_layers, model.cfg.n_heads
        ('HookedTransformer', 2, 4)
        >>> model.to_str_tokens("garden planet")
        ['<bos>', 'garden', 'planet']
    """
    if backend not in BACKEND_CHOICES:
        raise ModelLoadError(f"unknown backend {backend!r}; use one of {list(BACKEND_CHOICES)}")
    if not backend_module.has_hooked_transformer():
        if backend == "hooked":
            raise ModelLoadError(f"TransformerLens {_tl_version()} has no HookedTransformer (removed in 4.0); load "
                                 "with backend='bridge' or 'auto', or install transformer-lens<4")
        backend = "bridge"
    placement = {k: kwargs.pop(k) for k in BRIDGE_PLACEMENT if kwargs.get(k) is not None}
    if placement:
        if backend == "hooked":
            raise ModelLoadError(f"{sorted(placement)} spread a model over devices through the bridge; load it with "
                                 "backend='bridge' (or 'auto'), or drop them to load a HookedTransformer")
        backend = "bridge"
        if device is not None:
            raise ModelLoadError("pass either device or device_map / n_devices / max_memory, not both: the "
                                 "latter place the model's layers themselves")
        if placement.get("device_map") is None and not placement.get("n_devices"):
            raise ModelLoadError("max_memory budgets the devices a model is spread over; pass it with "
                                 "device_map='auto' (or n_devices)")
    device = None if placement else _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    parsed = parse_spec(spec)
    if parsed.kind == "zoo":
        if not backend_module.has_hooked_transformer():
            raise ModelLoadError(
                f"zoo model {parsed.name!r} is a HookedTransformer, which TransformerLens {_tl_version()} no longer has; "
                "install transformer-lens<4, or export it on a machine that has (`circuitkit zoo export NAME DIR`) "
                "and load that folder")
        if backend == "bridge":
            raise ModelLoadError(
                f"zoo model {parsed.name!r} is a HookedTransformer built from a TransformerLens config; to run it "
                f"as a bridge, write it as a Hugging Face folder (`circuitkit zoo export {parsed.name} DIR`) and "
                "load that folder with backend='bridge'")
        return load_zoo_model(parsed.name, device=device, dtype=torch_dtype)
    if backend == "bridge" and kwargs:
        raise ModelLoadError(f"{sorted(kwargs)} are HookedTransformer loading options; a bridge keeps the Hugging "
                             "Face weights as they are")
    if parsed.kind == "dir":
        path = Path(parsed.name).expanduser()
        if backend == "bridge":
            return _boot_bridge(str(path), device, torch_dtype, placement, local=True)
        try:
            return _load_local_hf(path, device, torch_dtype, **kwargs)
        except _UnconvertedArchitecture as exc:
            if backend == "hooked":
                raise ModelLoadError(str(exc)) from None
            log.info("%s; booting it as a TransformerBridge", exc)
            return _boot_bridge(str(path), device, torch_dtype, placement, local=True, why=str(exc))
    if backend == "bridge":
        return _boot_bridge(parsed.name, device, torch_dtype, placement, local=False)
    return _load_pretrained(parsed.name, device, torch_dtype, **kwargs)


class _UnconvertedArchitecture(Exception):
    """TransformerLens 3 has no HookedTransformer conversion for a folder's architecture."""


def _boot_bridge(name: str, device: str | None, dtype: torch.dtype, placement: dict, local: bool,
                 why: str | None = None):
    """A ``TransformerBridge`` of a local folder or hub name, with circuitkit's hook names
    (`circuitkit.models.backend.prepare`); ``ModelLoadError`` naming TransformerLens's own
    reason where it cannot boot the architecture."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise ModelLoadError(f"this TransformerLens ({_tl_version()}) has no TransformerBridge; install "
                             "transformer-lens>=3.9 to load models through the bridge") from None
    tokenizer = _folder_tokenizer(Path(name)) if local else None
    try:
        bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype, tokenizer=tokenizer, **placement)
    except Exception as exc:  # TransformerLens and Hugging Face raise many types; keep the upstream cause
        arch = _architecture_of(Path(name)) if local else name
        cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if not local and _looks_offline(cause):
            raise ModelLoadError(_no_weights_message(name, name, exc)) from None
        raise ModelLoadError(
            f"TransformerLens {_tl_version()} cannot boot {arch!r} from {name!r} as a TransformerBridge "
            f"(upstream: {cause})" + (f"; nor convert it to a HookedTransformer ({why})" if why else "")
            + ". See docs/models.md for the families circuitkit runs") from None
    broken = backend_module.audit(bridge).broken
    if broken:
        raise ModelLoadError(f"TransformerLens {_tl_version()} boots {_architecture_of(Path(name)) if local else name!r} "
                             f"from {name!r} as a TransformerBridge, but {broken}; see docs/models.md")
    return bridge


def _folder_tokenizer(path: Path):
    """The folder's own tokenizer where it has one; a weights-only folder gets a placeholder so the
    bridge does not look for one on the hub (token ids still work; text needs a tokenizer)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        log.warning("no tokenizer in %s; the model can run on token ids only", path)
        return _placeholder_tokenizer(path)


def _placeholder_tokenizer(path: Path):
    """A word-level tokenizer over the model's vocabulary size (``<0>`` .. ``<V-1>``) for a folder
    saved without one: the bridge needs a tokenizer object, circuitkit's methods only token ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config", config)
    size = int(text.get("vocab_size") or config.get("vocab_size"))
    vocab = {f"<{i}>": i for i in range(size)}
    raw = Tokenizer(WordLevel(vocab, unk_token="<0>"))
    # no BOS token: TransformerLens would rebuild a tokenizer with one from the folder's name
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<0>", eos_token="<0>", pad_token="<0>")


def _architecture_of(path: Path) -> str:
    try:
        return (json.loads((path / "config.json").read_text()).get("architectures") or ["?"])[0]
    except (OSError, ValueError):
        return "?"


def _tl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "?"


def _looks_offline(text: str) -> bool:
    return any(word in text for word in ("offline", "Offline", "connect", "Connection", "resolve", "cache",
                                         "not found", "LocalEntryNotFound"))


def _resolve_device(device) -> str:
    """The device as a string; ``ModelLoadError`` naming an unusable device (before any file is read)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r} ({exc}); use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if parsed.type == "meta":
        raise ModelLoadError("device 'meta' is not supported: meta tensors hold no weights, and every circuitkit "
                             "method runs the model; load on 'cpu' or 'cuda'")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine (torch "
                                 f"{torch.__version__}); load on 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                 f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: Apple MPS is not available on this machine; load on 'cpu'")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return str(device)


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64}
    if dtype not in table:
        raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _load_pretrained(name: str, device: str, dtype: torch.dtype, **kwargs) -> HookedTransformer:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(name)
    except ValueError:
        raise ModelLoadError(
            f"unknown model {name!r}: it is not a TransformerLens model name, a local directory or "
            "'zoo:NAME'. See transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES, or "
            "`circuitkit zoo list` for the bundled models"
        ) from None
    if not _in_hub_cache(official) and (_offline() or not _hub_reachable()):
        # fail at once: the hub client would retry for half a minute before giving up
        raise ModelLoadError(_no_weights_message(name, official, None))
    try:
        return HookedTransformer.from_pretrained(name, device=device, dtype=dtype, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise ModelLoadError(_no_weights_message(name, official, exc)) from None
    except Exception as exc:  # the hub client raises many types when offline; name them plainly
        if _looks_offline(f"{type(exc).__name__}: {exc}"):
            raise ModelLoadError(_no_weights_message(name, official, exc)) from None
        raise


def _in_hub_cache(repo: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo``'s config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return isinstance(found, str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _no_weights_message(name: str, official: str, exc: BaseException | None) -> str:
    mode = "HF_HUB_OFFLINE=1 is set" if _offline() else "the Hugging Face hub cannot be reached"
    return (
        f"cannot load {name!r} ({official}): its weights are not in the local Hugging Face cache and "
        f"{mode}. To get them, run once on a machine with network access:\n"
        f"    python -c \"from transformer_lens import HookedTransformer; HookedTransformer.from_pretrained('{name}')\"\n"
        f"and copy the cache (~/.cache/huggingface) here, or download the model directory "
        f"('{official}') and pass its path to load_model. Bundled offline models: `circuitkit zoo list`. "
        + (f"(underlying error: {type(exc).__name__})" if exc is not None else "")
    )


def _load_local_hf(path: Path, device: str, dtype: torch.dtype, **kwargs) -> HookedTransformer:
    """Load a local Hugging Face directory through TransformerLens's own converters."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{str(path)!r} has no config.json; a local model directory is what "
            "`model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)` write"
        )
    try:
        hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True).to_dict()
    except Exception as exc:
        raise ModelLoadError(f"cannot read the Hugging Face config in {str(path)!r}: {type(exc).__name__}: {exc}") from None
    # TransformerLens converts by architecture (read from the config alone, so a folder it cannot
    # convert goes to the bridge before any weight is read); the directory path stands in for the hub name.
    try:
        gemma = _gemma_config(hf_cfg)
        if gemma is not None:
            cfg = HookedTransformerConfig(**gemma, model_name=path.name, device=device, dtype=dtype, init_weights=False)
            kwargs = {**kwargs, "fold_ln": False, "center_writing_weights": False}
        else:
            with _config_dir_for_transformer_lens(path, hf_cfg) as cfg_dir:
                cfg = loading.get_pretrained_model_config(str(cfg_dir), hf_cfg=hf_cfg,
                                                          fold_ln=kwargs.get("fold_ln", True), device=device, dtype=dtype)
    except Exception as exc:
        arch = (hf_cfg.get("architectures") or ["?"])[0]
        raise _UnconvertedArchitecture(
            f"TransformerLens {_tl_version()} cannot convert architecture {arch!r} from {str(path)!r} to a "
            f"HookedTransformer ({exc})") from None
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the Hugging Face model in {str(path)!r}: {type(exc).__name__}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        tokenizer = None
        log.warning("no tokenizer in %s; the model can run on token ids only", path)
    if (cfg.output_logits_soft_cap or 0) > 0:  # as from_pretrained: soft-capping is not shift-invariant
        kwargs = {**kwargs, "center_unembed": False}
    state_dict = loading.get_pretrained_state_dict(str(path.resolve()), cfg, hf_model, dtype=dtype)
    if tokenizer is None:  # else HookedTransformer looks for the converter's tokenizer name on the hub
        cfg.tokenizer_name = None
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=kwargs.get("fold_ln", True),
        center_writing_weights=kwargs.get("center_writing_weights", True),
        center_unembed=kwargs.get("center_unembed", True),
        fold_value_biases=kwargs.get("fold_value_biases", True),
    )
    model.cfg.model_name = path.name
    return model.to(device)


# TransformerLens knows Gemma only by the sizes Google published (it reads no Gemma config), so a
# Gemma-shaped folder of any other size gets its configuration here, key for key as TransformerLens
# writes it for google/gemma-2-2b and google/gemma-3-1b; the weights go through its own converter.
_GEMMA_ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")


def _gemma_config(hf_cfg: dict) -> dict | None:
    """HookedTransformerConfig fields for a Gemma-2 / Gemma-3 (text) Hugging Face config, else None."""
    arch = (hf_cfg.get("architectures") or [None])[0]
    if arch not in _GEMMA_ARCHITECTURES:
        return None
    rope = hf_cfg.get("rope_parameters") or {}
    layer_types = hf_cfg.get("layer_types") or []
    cfg = dict(
        d_model=hf_cfg["hidden_size"], d_head=hf_cfg["head_dim"], n_heads=hf_cfg["num_attention_heads"],
        d_mlp=hf_cfg["intermediate_size"], n_layers=hf_cfg["num_hidden_layers"],
        n_ctx=hf_cfg["max_position_embeddings"], eps=hf_cfg["rms_norm_eps"], d_vocab=hf_cfg["vocab_size"],
        act_fn=hf_cfg.get("hidden_activation") or "gelu_pytorch_tanh", initializer_range=hf_cfg["initializer_range"],
        normalization_type="RMS", positional_embedding_type="rotary", use_attn_scale=True,
        attn_scale=float(hf_cfg["query_pre_attn_scalar"]) ** 0.5, n_key_value_heads=hf_cfg["num_key_value_heads"],
        gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
        window_size=hf_cfg["sliding_window"], use_local_attn=True,
        attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types],
        original_architecture=arch,
    )
    if arch == "Gemma2ForCausalLM":
        cfg.update(rotary_base=rope.get("rope_theta", hf_cfg.get("rope_theta", 10000.0)),
                   attn_scores_soft_cap=hf_cfg.get("attn_logit_softcapping") or -1.0,
                   output_logits_soft_cap=hf_cfg.get("final_logit_softcapping") or -1.0)
    else:
        full, sliding = rope.get("full_attention", {}), rope.get("sliding_attention", {})
        cfg.update(rotary_base=full.get("rope_theta", hf_cfg.get("rope_theta", 1_000_000.0)),
                   rotary_base_local=sliding.get("rope_theta", hf_cfg.get("rope_local_base_freq", 10000.0)),
                   use_qk_norm=True)
    return cfg


@contextlib.contextmanager
def _config_dir_for_transformer_lens(path: Path, hf_cfg: dict):
    """A directory holding only ``config.json``, with fields TransformerLens 3 still reads.

    TransformerLens picks the architecture by reading the directory's config (and, for some
    families, by the directory *name*); newer transformers dropped GPT-2's ``n_ctx``. Copying
    the config to a neutral temp dir sidesteps both without touching the user's files.
    """
    config = json.loads((path / "config.json").read_text())
    if "n_positions" in config and "n_ctx" not in config:
        config["n_ctx"] = config["n_positions"]
    with tempfile.TemporaryDirectory(prefix="circuitkit-cfg-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        yield Path(tmp)
