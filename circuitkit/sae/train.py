"""Train, save and load sparse autoencoders through SAELens.

Training is SAELens's own ``LanguageModelSAETrainingRunner`` (its ``ActivationsStore`` +
``SAETrainer``), fed offline: the token tensor (or a local text file) becomes an in-memory
``datasets.Dataset`` passed as ``override_dataset`` and the model is passed as
``override_model``; nothing touches the hub or W&B. Checkpoints are SAELens's own format
(``cfg.json`` + ``sae_weights.safetensors``), read with ``safetensors`` — never unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.atomic import folder_written
from circuitkit.errors import InputError, InputTypeError, MissingFileError, RunError
from circuitkit.models.loading import ZOO_PREFIX, load_model, zoo_sae_folder
from circuitkit.sae.features import check_hook, hook_width
from circuitkit.tokenizers import check_token_ids, python_docs_corpus, read_text_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "zoo:tiny-lm"
DEFAULT_HOOK = names.hook("resid_pre", 1)
WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
CONFIG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME

Architecture = Literal["standard", "topk", "jumprelu"]
# The architectures train_sae trains, each with the hyper-parameters of SAETrainConfig it reads;
# the training classes themselves come from SAELens's own registry (sae_lens.registry).
ARCHITECTURE_PARAMS: dict[str, tuple[str, ...]] = {
    "standard": ("l1_coefficient",),
    "topk": ("k",),
    "jumprelu": ("l0_coefficient", "jumprelu_init_threshold", "jumprelu_bandwidth"),
}
ARCHITECTURES = tuple(ARCHITECTURE_PARAMS)
DEFAULT_ARCHITECTURE: Architecture = "topk"  # train_sae's and `circuitkit sae train`'s one default


def _training_config_class(architecture: str):
    from sae_lens.registry import get_sae_training_class

    if architecture not in ARCHITECTURE_PARAMS:
        raise InputError(f"unknown SAE architecture {architecture!r}; choose one of {ARCHITECTURES}")
    return get_sae_training_class(architecture)[1]


def _resolve_model(model):
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device="cpu")
    return model


def text_to_tokens(model, text: str, context_size: int) -> Tensor:
    """Tokenize ``text`` with the model's tokenizer into rows of ``context_size`` tokens.

    Each row starts with the tokenizer's BOS token when it has one, the way prompts do.
    """
    if model.tokenizer is None:
        raise InputError("the model has no tokenizer; pass a token tensor [n, context] instead of text")
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = model.tokenizer.bos_token_id
    width = context_size - (bos is not None)
    n = len(ids) // width
    if n == 0:
        raise InputError(f"the text holds {len(ids)} tokens, fewer than one context of {context_size}; give more text")
    rows = torch.tensor(ids[: n * width], dtype=torch.long).reshape(n, width)
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)
    return rows


def training_tokens(model, data=None, context_size: int = 64, n_chars: int = 800_000) -> Tensor:
    """Token rows ``[n, context_size]`` from a tensor, a text file path, a string or (None) the
    Python-docstring corpus the zoo's tiny LM was trained on."""
    if data is None:
        return text_to_tokens(model, python_docs_corpus(n_chars), context_size)
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        return text_to_tokens(model, read_text_file(data), context_size)
    if isinstance(data, (str, os.PathLike)) and (os.sep in str(data) or str(data).endswith(".txt")):
        raise MissingFileError(f"no text file at {str(data)!r}; pass an existing text file or a token tensor")
    if isinstance(data, str):
        return text_to_tokens(model, data, context_size)
    tokens = check_token_ids(model, data).cpu()
    if tokens.shape[1] < context_size:
        raise InputError(f"token rows hold {tokens.shape[1]} tokens but context_size={context_size}; "
                         f"pass context_size<={tokens.shape[1]} or longer rows")
    return tokens[:, :context_size]


@dataclass(frozen=True)
class SAETrainConfig:
    """The hyperparameters of `train_sae` (SAELens's training runner does the training).

    ``l1_coefficient``: ``standard`` (ReLU + L1) SAEs; ``k``: ``topk``; ``l0_coefficient``,
    ``jumprelu_init_threshold``, ``jumprelu_bandwidth``: ``jumprelu``. ``steps`` optimiser steps of
    ``batch_size_tokens`` activations each, from prompts of ``context_size`` tokens.
    """

    l1_coefficient: float = 5.0
    k: int = 16
    l0_coefficient: float = 1.0
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    steps: int = 2000
    batch_size_tokens: int = 1024
    context_size: int = 64
    lr: float = 1e-3
    lr_warm_up_steps: int = 0
    seed: int = 0


def config_with(config: SAETrainConfig | None, overrides: dict[str, Any]) -> SAETrainConfig:
    """``config`` (default `SAETrainConfig`) with ``overrides``; ``TypeError`` naming the
    fields for an unknown one."""
    fields = {f.name for f in dataclasses.fields(SAETrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputTypeError(f"train_sae got unknown hyperparameters {unknown}; SAETrainConfig has {sorted(fields)}")
    return dataclasses.replace(config or SAETrainConfig(), **overrides)


def train_sae(
    model: Any = DEFAULT_MODEL,
    hook_name: str = DEFAULT_HOOK,
    tokens_or_text_path: Any = None,
    architecture: Architecture = DEFAULT_ARCHITECTURE,
    d_sae: int | None = None,
    *,
    config: SAETrainConfig | None = None,
    device: str = "cpu",
    progress: bool = True,
    **hyperparameters: Any,
):
    """Train an SAE on ``hook_name`` of ``model`` with SAELens; return the inference ``SAE``.

    Args:
        model: a ``HookedTransformer`` or a spec for `circuitkit.load_model` (default the
            zoo's tiny language model).
        hook_name: any hook point (``blocks.1.hook_resid_pre``, ``blocks.0.hook_mlp_out``...).
        tokens_or_text_path: token ids ``[n, pos]``, a local text file, or None for the Python
            docstring corpus.
        architecture: ``"topk"`` (default; ``k``), ``"standard"`` (ReLU + L1, ``l1_coefficient``) or
            ``"jumprelu"`` (``l0_coefficient``, ``jumprelu_init_threshold``, ``jumprelu_bandwidth``).
        d_sae: number of latents (default ``8 * d_in``).
        config: the training hyperparameters (`SAETrainConfig`); keyword arguments named
            like its fields (``steps=400``, ``k=16`` ...) override single ones.

    Returns a SAELens ``StandardSAE`` / ``TopKSAE`` / ``JumpReLUSAE`` with ``cfg.metadata``
    naming the hook and the model.
    """
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    cfg_class = _training_config_class(architecture)
    hp = config_with(config, hyperparameters)
    model = _resolve_model(model)
    check_hook(model, hook_name)
    if hp.steps < 1 or hp.batch_size_tokens < 1:
        raise InputError(f"steps ({hp.steps}) and batch_size_tokens ({hp.batch_size_tokens}) must be positive")
    d_in = hook_width(model, hook_name)
    d_sae = int(d_sae or 8 * d_in)
    tokens = training_tokens(model, tokens_or_text_path, hp.context_size)
    arch_params: dict[str, Any] = {name: getattr(hp, name) for name in ARCHITECTURE_PARAMS[architecture]}
    if architecture == "topk" and not 0 < hp.k <= d_sae:
        raise InputError(f"k={hp.k} must lie in 1..d_sae={d_sae}")
    sae_cfg = cfg_class(d_in=d_in, d_sae=d_sae, device=device, **arch_params)
    # The mixing buffer must hold at least one training batch: size it to two.
    n_batches_in_buffer = max(2, math.ceil(2 * hp.batch_size_tokens / hp.context_size))
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name=model.cfg.model_name, hook_name=hook_name, dataset_path="",
        is_dataset_tokenized=True, streaming=False, context_size=hp.context_size,
        training_tokens=hp.steps * hp.batch_size_tokens, train_batch_size_tokens=hp.batch_size_tokens,
        store_batch_size_prompts=max(1, min(32, hp.batch_size_tokens // hp.context_size)),
        n_batches_in_buffer=n_batches_in_buffer, prepend_bos=False, device=device, seed=hp.seed,
        lr=hp.lr, lr_warm_up_steps=hp.lr_warm_up_steps, lr_scheduler_name="constant",
        logger=LoggingConfig(log_to_wandb=False), output_path=None, checkpoint_path=None, n_checkpoints=0,
        verbose=False, n_eval_batches=1, dead_feature_window=max(50, hp.steps // 10),
        feature_sampling_window=max(100, hp.steps // 5),
    )
    dataset = Dataset.from_dict({"tokens": tokens.tolist()})
    torch.manual_seed(hp.seed)
    was_training = model.training
    with quiet_sae_lens(progress):
        runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model)
        training_sae = runner.run()
    model.train(was_training)
    # The model came from circuitkit, not from SAELens's from_pretrained: no kwargs to replay.
    training_sae.cfg.metadata.model_from_pretrained_kwargs = {}
    return to_inference_sae(training_sae, device=device)


@contextlib.contextmanager
def quiet_sae_lens(progress: bool) -> Iterator[None]:
    """Silence SAELens's notices (overridden dataset / model) and, unless ``progress``, its tqdm bar."""
    from sae_lens import logger as sae_logger
    from sae_lens.training import sae_trainer

    level = sae_logger.level
    sae_logger.setLevel(logging.ERROR)
    original_tqdm = sae_trainer.tqdm
    if not progress:
        sae_trainer.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        with warnings.catch_warnings():
            # Repeating a small token set for several epochs is intended here; SAELens warns about it.
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        sae_trainer.tqdm = original_tqdm
        sae_logger.setLevel(level)


def to_inference_sae(sae, device: str = "cpu"):
    """A SAELens ``TrainingSAE`` as its inference class, through SAELens's own save / load."""
    from sae_lens import SAE, TrainingSAE

    if not isinstance(sae, TrainingSAE):
        return sae
    with tempfile.TemporaryDirectory(prefix="circuitkit-sae-") as tmp:
        sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=device)


# --- save / load ------------------------------------------------------------------------------

def save_sae(sae, path: str | os.PathLike) -> Path:
    """Write the SAE in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``) atomically."""
    from sae_lens import TrainingSAE

    final = Path(path)
    with folder_written(final) as tmp:
        if isinstance(sae, TrainingSAE):
            sae.save_inference_model(tmp)
        else:
            sae.save_model(tmp)
    return final


def load_sae(path: str | os.PathLike, device: str = "cpu"):
    """Load an SAE saved by `save_sae` or SAELens (``SAE.load_from_disk``), or one a zoo model
    ships with: ``"zoo:NAME/HOOK"`` (`circuitkit zoo show NAME` lists them).

    The weights are checked with ``safetensors`` first (SAELens's disk loader also reads them
    with ``safe_open``); a missing, truncated or corrupted file raises ``ValueError`` naming it.
    """
    from sae_lens import SAE
    from safetensors import safe_open

    if isinstance(path, str) and path.startswith(ZOO_PREFIX):
        path = zoo_sae_folder(path)
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"no SAE directory at {str(path)!r}; give a folder saved by `circuitkit sae train ... "
                               "--out DIR`, or a shipped one as zoo:NAME/HOOK (`circuitkit zoo list` shows which "
                               "models ship SAEs)")
    weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
    for f in (config, weights):
        if not f.exists():
            raise MissingFileError(f"{str(path)!r} has no {f.name}; an SAELens SAE directory holds {CONFIG_FILE} "
                                    f"and {WEIGHTS_FILE} (written by save_sae / sae.save_model)")
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{config} is not valid JSON ({exc}); re-save the SAE with save_sae") from None
    missing = [key for key in ("architecture", "d_in", "d_sae") if key not in cfg]
    if missing:
        raise InputError(f"{config} lacks {missing}; it is not an SAELens SAE config; re-save the SAE with save_sae")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
            for key in f.keys():  # noqa: SIM118
                f.get_tensor(key)
    except Exception as exc:
        raise InputError(f"cannot read SAE weights {weights}: {type(exc).__name__}: {exc}; the file is corrupt "
                         "or not safetensors; re-save the SAE with save_sae (or retrain it)") from None
    w_enc = shapes.get("W_enc")
    if w_enc is not None and w_enc != (cfg["d_in"], cfg["d_sae"]):
        raise InputError(f"{weights} holds W_enc of shape {w_enc} but {config} says d_in={cfg['d_in']}, "
                         f"d_sae={cfg['d_sae']}; the files come from different SAEs, re-save it")
    try:
        return SAE.load_from_disk(str(path), device=device)
    except Exception as exc:
        raise InputError(f"SAELens cannot load the SAE in {str(path)!r}: {type(exc).__name__}: {exc}") from None


# Pretrained-release converters in SAELens that read pickles (torch.load); refused here.
_PICKLE_CONVERTERS = {"connor_rob_hook_z", "goodfire", "deepseek_r1", "qwen_scope", "dictionary_learning_1"}


def load_pretrained_sae(release: str, sae_id: str, device: str = "cpu"):
    """``SAE.from_pretrained(release, sae_id)`` with clear errors offline or for pickled releases."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        import difflib

        close = difflib.get_close_matches(release, list(directory), n=5)
        raise InputError(f"unknown SAELens release {release!r}; close matches: {close} "
                         "(all releases: sae_lens/pretrained_saes.yaml)")
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        import difflib

        close = difflib.get_close_matches(sae_id, list(lookup.saes_map), n=5)
        raise InputError(f"release {release!r} has no SAE {sae_id!r}; close matches: {close}")
    converter = getattr(lookup, "conversion_func", None) or "sae_lens"
    if converter in _PICKLE_CONVERTERS:
        raise InputError(f"release {release!r} is stored as pickled tensors ({converter}); circuitkit never "
                         "unpickles checkpoints. Convert it once to SAELens's safetensors format "
                         "(SAE.from_pretrained(...).save_model(DIR)) in a trusted environment and load_sae(DIR)")
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if offline or any(w in text for w in ("offline", "Offline", "connect", "Connection", "resolve",
                                               "LocalEntryNotFound", "cache")):
            mode = "HF_HUB_OFFLINE=1 is set" if offline else "the Hugging Face hub cannot be reached"
            raise RunError(
                f"cannot load SAE {sae_id!r} of release {release!r} ({lookup.repo_id}): it is not in the local "
                f"Hugging Face cache and {mode}. Run once with network access:\n"
                f"    python -c \"from sae_lens import SAE; SAE.from_pretrained('{release}', '{sae_id}')\"\n"
                "and copy ~/.cache/huggingface here, or save it with sae.save_model(DIR) and use load_sae(DIR). "
                f"(underlying error: {type(exc).__name__})"
            ) from None
        raise
