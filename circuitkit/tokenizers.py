"""Tokenizer helpers: one way to turn text into ids for any model, and offline-built tokenizers.

Builders work with any Hugging Face tokenizer (GPT-2 style byte-level BPE with leading-space
tokens, word-level zoo tokenizers, SentencePiece). The trick that makes this uniform: a word's
id *as a continuation* is found by tokenizing ``prefix + " " + word`` and taking what follows the
prefix's tokens, so leading-space conventions never need special cases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from circuitkit.errors import InputError, MissingFileError

SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}

# Words and two-digit chunks (so "1732" is "17" "32", as GPT-2 splits years), and punctuation.
WORD_LEVEL_PATTERN = r"\d\d|\d|[A-Za-z_]+|[^\sA-Za-z0-9_]"


def tokenizer_of(model_or_tokenizer):
    """The Hugging Face tokenizer of a HookedTransformer, or the tokenizer itself."""
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tok is None or not hasattr(tok, "encode"):
        raise InputError(
            "this model has no tokenizer; load it with circuitkit.load_model (which attaches one) "
            "or pass a Hugging Face tokenizer"
        )
    return tok


def encode(tokenizer, text: str, prepend_bos: bool = True) -> list[int]:
    """Token ids of ``text`` without the tokenizer's own special tokens, BOS first if asked."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if prepend_bos:
        bos = bos_id(tokenizer)
        ids = [bos, *ids]
    return ids


def read_text_file(path) -> str:
    """A text file's contents as UTF-8; ``ValueError`` for a binary file (NUL bytes or bytes that
    are not UTF-8), naming the offset, instead of training or evaluating on garbage."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no text file at {str(path)!r}; pass an existing UTF-8 text file")
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{str(path)!r} is a binary file, not text (a NUL byte at offset {nul}); pass a UTF-8 "
                         "text file (convert documents with e.g. `pdftotext` first)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{str(path)!r} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                         "pass a UTF-8 text file, or re-encode it (e.g. `iconv -t UTF-8`)") from None


def bos_id(tokenizer) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise InputError("the tokenizer has neither a BOS nor an EOS token to start prompts with; pass prepend_bos=False (on the command line: --no-prepend-bos)")


def pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def continuation_ids(tokenizer, prefix: str, word: str, sep: str = " ") -> list[int]:
    """The ids that ``word`` adds after ``prefix`` (``sep`` between them)."""
    base = tokenizer.encode(prefix, add_special_tokens=False)
    full = tokenizer.encode(prefix + sep + word, add_special_tokens=False)
    if full[: len(base)] != base:
        # The word merged with the end of the prefix; report it as not separable.
        return []
    return list(full[len(base):])


def single_token_id(tokenizer, word: str, prefix: str = "and", sep: str = " ") -> int | None:
    """The one id of ``word`` as a continuation, or None when it is not a single known token."""
    ids = continuation_ids(tokenizer, prefix, word, sep)
    if len(ids) != 1:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        return None
    return ids[0]


def ordinary_token_ids(tokenizer) -> list[int]:
    """Every id that is not a special token, nor the id prompts are padded with (for random-token
    tasks: a tokenizer with no special tokens pads with id 0, which must then never be a prompt
    token)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | {pad_id(tokenizer)}
    return [i for i in range(len(tokenizer)) if i not in special]


def decode_each(tokenizer, ids: Iterable[int]) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def word_level_tokenizer(words: Sequence[str], model_max_length: int = 4096):
    """A Hugging Face fast tokenizer over a fixed word list (the zoo's synthetic models use it).

    Special tokens ``<bos> <eos> <pad> <unk>`` take ids 0-3; words follow in the given order.
    Text is split into words, two-digit chunks and punctuation (`WORD_LEVEL_PATTERN`).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS.values(), *words]:
        if token not in vocab:
            vocab[token] = len(vocab)
    bad = [w for w in words if not re.fullmatch(WORD_LEVEL_PATTERN, w) and w not in SPECIAL_TOKENS.values()]
    if bad:
        raise InputError(
            f"words {bad[:5]} would never be produced by the word-level splitter; use single words, "
            "one or two digits, or one punctuation mark per entry"
        )
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_LEVEL_PATTERN), behavior="isolated")]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return wrap_tokenizer(core, "circuitkit-word-level", model_max_length)


def wrap_tokenizer(core, name: str, model_max_length: int = 4096):
    """A ``PreTrainedTokenizerFast`` around a ``tokenizers.Tokenizer`` that prepends ``<bos>``.

    Prepending BOS in the tokenizer itself (as Llama's does) is what TransformerLens expects
    of a tokenizer it did not load from the hub (``add_bos_token=True``).
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos = SPECIAL_TOKENS["bos_token"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, core.token_to_id(bos))]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=model_max_length, add_bos_token=True,
                                  name_or_path=name, **SPECIAL_TOKENS)
    tok.padding_side = "right"
    return tok


def load_tokenizer_file(path, name: str | None = None, model_max_length: int = 4096):
    """Load a ``tokenizer.json`` written by `wrap_tokenizer`'s tokenizers."""
    from pathlib import Path

    from tokenizers import Tokenizer

    path = Path(path)
    return wrap_tokenizer(Tokenizer.from_file(str(path)), name or path.parent.name, model_max_length)


def python_docs_corpus(max_chars: int = 2_000_000) -> str:
    """English text that every Python installation carries: the standard library's docstrings.

    Used to train the zoo's tiny language model and its BPE tokenizer fully offline.
    """
    import importlib
    import pkgutil
    import sys
    import warnings

    # A stdlib module's attributes (and so the docstrings found) depend on what else the process has
    # imported; importing the stack circuitkit runs on first gives every process the same corpus, the
    # one the shipped tiny-lm was trained on, whatever its caller imported.
    import torch  # noqa: F401
    import transformer_lens  # noqa: F401

    skip = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip", "venv")
    pieces: list[str] = []
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
            name = info.name
            if name.startswith("_") or name.startswith(skip) or name not in sys.stdlib_module_names:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - some stdlib modules need platform support
                continue
            for obj in [module, *vars(module).values()]:
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str) and len(doc) > 80 and doc not in pieces:
                    pieces.append(doc.strip())
                    total += len(doc)
            if total >= max_chars:
                break
    return "\n\n".join(pieces)[:max_chars]


def train_bpe_tokenizer(text: str, vocab_size: int = 2048, model_max_length: int = 4096):
    """A GPT-2-style byte-level BPE tokenizer trained on ``text`` (seconds, offline).

    Digits are grouped in pairs before BPE, so a year splits as century + two digits the way
    GPT-2's learned merges split it (what the greater-than task needs).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([text], trainer=trainer)
    return wrap_tokenizer(core, "circuitkit-bpe", model_max_length)


def check_token_ids(model, tokens):
    """``tokens`` as a ``[batch, pos]`` long tensor on the model's device; ``ValueError`` when they
    are not integer ids of the model's vocabulary."""
    import torch

    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise InputError(f"tokens must be integer ids of shape [batch, pos], got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.numel() and (int(tokens.max()) >= model.cfg.d_vocab or int(tokens.min()) < 0):
        raise InputError(f"token ids must lie in [0, {model.cfg.d_vocab}) for model {model.cfg.model_name!r}; "
                         "tokenize with the model's own tokenizer")
    return tokens.long().to(model.cfg.device or "cpu")
