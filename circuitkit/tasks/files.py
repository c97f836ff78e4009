"""A researcher's own task from a file: JSON / YAML (prompts and answers, as text or token ids) or
safetensors (token tensors). Nothing is unpickled: JSON through `json`, YAML through
``yaml.safe_load``, tensors through `safetensors`.

JSON / YAML (one entry per prompt; every key but ``clean`` and ``answers`` optional)::

    name: my-task                      # default: the file's name
    metric: logit_diff                 # any of circuitkit.tasks.METRICS (default: logit_diff when
                                       # wrong answers are given, else answer_logprob)
    prepend_bos: false                 # text prompts only; default: BOS first when the tokenizer has one
    position_reduce: mean              # several answer positions: mean or sum over them
    prompts:
      - clean: "When Mary and John went to the store, John gave a drink to"
        corrupted: "When Alice and Bob went to the store, Carl gave a drink to"
        answers: [" Mary"]             # text: each must be ONE token (mind the leading space)
        wrong_answers: [" John"]
      - clean: [3, 1, 4, 1]            # or token ids (then no tokenizer is needed)
        corrupted: [3, 2, 4, 1]
        answers: [5, 0]                # one answer per position listed in answer_pos
        answer_pos: [2, 3]             # default: the prompt's last token
        target: [0.5, 1.0]             # numeric outputs: data['target'] for the mse / l2 metrics

safetensors: int tensors ``clean`` / ``corrupted`` ``[batch, pos]``, ``answers`` ``[batch]`` /
``[batch, n]`` (``[batch, k]`` or ``[batch, k, n]`` with a ``[batch, k]`` ``answer_pos``),
optional ``wrong_answers``, ``answer_pos``; float tensors become ``task.data`` (e.g. ``target``);
the file's string metadata may set ``name``, ``metric`` and ``position_reduce``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from circuitkit.errors import InputError, MissingFileError
from circuitkit.tasks.task import PAD_ANSWER, PAD_POSITION, Task, TaskError
from circuitkit.tokenizers import encode, pad_id, tokenizer_of

TASK_FILE_SUFFIXES = (".json", ".yaml", ".yml", ".safetensors")
ENTRY_KEYS = ("clean", "corrupted", "answers", "wrong_answers", "answer_pos", "target")
TOP_KEYS = ("name", "metric", "prepend_bos", "position_reduce", "prompts")
TENSOR_KEYS = ("clean", "corrupted", "answers", "wrong_answers", "answer_pos")


def is_task_file(value: str | os.PathLike) -> bool:
    """Whether ``value`` names a task file (by suffix) rather than a builder."""
    return Path(value).suffix.lower() in TASK_FILE_SUFFIXES


def load_task_file(path: str | os.PathLike, model_or_tokenizer=None, *, prepend_bos: bool | None = None,
                   metric: str | None = None) -> Task:
    """Read a task file (see the module docstring); ``TaskError`` names the entry, the key and the fix.

    ``model_or_tokenizer`` tokenizes text prompts / answers (not needed for token ids) and sets the
    vocabulary the tokens are checked against. ``prepend_bos`` / ``metric`` override the file's.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no task file at {str(path)!r}; pass a .json, .yaml or .safetensors task file "
                                "or a builder name (ioi, induction, ...)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        task = _from_safetensors(path)
    elif suffix in (".json", ".yaml", ".yml"):
        task = _from_mapping(_read_mapping(path), path, model_or_tokenizer, prepend_bos)
    else:
        raise TaskError(f"{path}: unknown task file type {path.suffix!r}; use .json, .yaml, .yml or .safetensors "
                        "(pickled files are never read)")
    if metric is not None:
        task = task.with_metric(metric)
    if model_or_tokenizer is not None:
        cfg = getattr(model_or_tokenizer, "cfg", None)
        if cfg is not None:
            task.check_model(model_or_tokenizer)
    return task


def read_utf8(path: str | os.PathLike, error: type[InputError] = InputError) -> str:
    """A spec or task file's text; ``error`` naming the file when it is not UTF-8 text (a binary file)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); a YAML / JSON / "
                    "TOML file is text: save it as UTF-8") from None


def load_yaml(text: str, where: str, error: type[InputError] = InputError) -> Any:
    """``yaml.safe_load`` that also refuses a key given twice in one mapping (safe_load keeps the
    last silently) and an alias inside the node it names (a structure that contains itself);
    ``error`` names ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise error(f"{where}: not valid YAML{at}: {problem}") from None


def load_json(text: str, where: str, error: type[InputError] = InputError) -> Any:
    """``json.loads`` that refuses a key given twice in one object (json keeps the last silently)."""
    def unique(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise error(f"{where}: key {twice[0]!r} is given twice in one object; give each key once")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc}); fix the syntax") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping and an alias inside the node it names."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in getattr(self, "_open_anchors", ()):
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} lies inside the node &{event.anchor} it names "
                    "(a structure that contains itself)", event.start_mark)
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor):
        return self._composing(anchor, super().compose_sequence_node)

    def compose_mapping_node(self, anchor):
        return self._composing(anchor, super().compose_mapping_node)

    def _composing(self, anchor, compose):
        if not hasattr(self, "_open_anchors"):
            self._open_anchors: set = set()
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return compose(anchor)
        finally:
            self._open_anchors.discard(anchor)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice (first on line {first.start_mark.line + 1}); give each key once",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_mapping(path: Path) -> dict:
    text = read_utf8(path, TaskError)
    if path.suffix.lower() == ".json":
        data = load_json(text, str(path), TaskError)
    else:
        data = load_yaml(text, str(path), TaskError)
    if isinstance(data, list):
        data = {"prompts": data}
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file holds a mapping with 'prompts' (a list of {{clean, corrupted, answers}}), "
                        f"got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise TaskError(f"{path}: unknown key {unknown[0]!r}; a task file's keys are {list(TOP_KEYS)}")
    for key, kind, words in (("name", str, "a string"), ("metric", str, "a metric name such as logit_diff"),
                             ("prepend_bos", bool, "true or false"), ("position_reduce", str, "mean or sum")):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise TaskError(f"{path}: {key} must be {words}, got {data[key]!r} ({type(data[key]).__name__})")
    if not isinstance(data.get("prompts"), list) or not data["prompts"]:
        raise TaskError(f"{path}: 'prompts' must be a non-empty list of {{clean, corrupted, answers}} entries")
    return data


def _from_mapping(spec: dict, path: Path, model_or_tokenizer, prepend_bos: bool | None) -> Task:
    entries = spec["prompts"]
    needs_tokenizer = any(isinstance(e, dict) and any(isinstance(e.get(k), str) or _has_text(e.get(k))
                                                      for k in ("clean", "corrupted", "answers", "wrong_answers"))
                          for e in entries)
    tok = tokenizer_of(model_or_tokenizer) if needs_tokenizer and model_or_tokenizer is not None else None
    if needs_tokenizer and tok is None:
        raise TaskError(f"{path}: the prompts are text, so a model or tokenizer is needed to tokenize them; "
                        "pass one, or give token ids")
    if prepend_bos is None:
        prepend_bos = spec.get("prepend_bos")
    if prepend_bos is None:  # BOS first when the tokenizer has one (GPT-2 style), else not
        prepend_bos = tok is not None and any(getattr(tok, a, None) is not None for a in ("bos_token_id", "eos_token_id"))
    rows: dict[str, list] = {k: [] for k in ENTRY_KEYS}
    texts: list[str] = []
    corrupted_texts: list[str] = []
    for i, entry in enumerate(entries):
        where = f"{path}: prompts[{i}]"
        if not isinstance(entry, dict):
            raise TaskError(f"{where}: expected a mapping {{clean, corrupted, answers}}, got {entry!r}")
        unknown = [k for k in entry if k not in ENTRY_KEYS]
        if unknown:
            raise TaskError(f"{where}: unknown key {unknown[0]!r}; an entry's keys are {list(ENTRY_KEYS)}")
        for key in ("clean", "answers"):
            if key not in entry:
                raise TaskError(f"{where}: missing {key!r}; every prompt needs 'clean' and 'answers'")
        clean = _tokens(entry["clean"], tok, prepend_bos, f"{where}.clean")
        corrupted = _tokens(entry.get("corrupted", entry["clean"]), tok, prepend_bos, f"{where}.corrupted")
        if len(clean) != len(corrupted):
            raise TaskError(f"{where}: clean has {len(clean)} tokens, corrupted {len(corrupted)}; clean and corrupted "
                            "prompts must have the same number of tokens")
        pos = entry.get("answer_pos", len(clean) - 1)
        if not (isinstance(pos, int) or (isinstance(pos, list) and pos and all(isinstance(p, int) for p in pos))):
            raise TaskError(f"{where}.answer_pos: expected a token index or a list of them, got {pos!r}")
        k = len(pos) if isinstance(pos, list) else None
        rows["clean"].append(clean)
        rows["corrupted"].append(corrupted)
        rows["answer_pos"].append(pos)
        rows["answers"].append(_answers(entry["answers"], tok, k, f"{where}.answers"))
        rows["wrong_answers"].append(_answers(entry.get("wrong_answers", []), tok, k, f"{where}.wrong_answers",
                                              allow_empty=True))
        rows["target"].append(entry.get("target"))
        texts.append(entry["clean"] if isinstance(entry["clean"], str) else "")
        corrupted_texts.append(entry.get("corrupted", entry["clean"]) if isinstance(entry["clean"], str) else "")
    multi = any(isinstance(p, list) for p in rows["answer_pos"])
    pad = pad_id(tok) if tok is not None else 0
    width = max(len(r) for r in rows["clean"])
    tensors: dict[str, Any] = {
        "clean": torch.tensor([r + [pad] * (width - len(r)) for r in rows["clean"]]),
        "corrupted": torch.tensor([r + [pad] * (width - len(r)) for r in rows["corrupted"]]),
    }
    if multi:
        ks = [p if isinstance(p, list) else [p] for p in rows["answer_pos"]]
        k = max(len(p) for p in ks)
        tensors["answer_pos"] = torch.tensor([p + [PAD_POSITION] * (k - len(p)) for p in ks])
        for key in ("answers", "wrong_answers"):
            per_pos = [r if isinstance(p, list) else [r] for r, p in zip(rows[key], rows["answer_pos"], strict=True)]
            n = max(1, max((len(a) for r in per_pos for a in r), default=0))
            tensors[key] = torch.tensor([[a + [PAD_ANSWER] * (n - len(a)) for a in r] + [[PAD_ANSWER] * n] * (k - len(r))
                                         for r in per_pos])
    else:
        tensors["answer_pos"] = torch.tensor(rows["answer_pos"])
        for key in ("answers", "wrong_answers"):
            n = max(1, max(len(r) for r in rows[key]))
            tensors[key] = torch.tensor([r + [PAD_ANSWER] * (n - len(r)) for r in rows[key]])
    data = {}
    targets = rows["target"]
    if any(t is not None for t in targets):
        if any(t is None for t in targets):
            raise TaskError(f"{path}: prompt {targets.index(None)} has no 'target' while others do; give every prompt one")
        try:
            data["target"] = torch.tensor(targets, dtype=torch.float32)
        except (ValueError, TypeError):
            raise TaskError(f"{path}: the prompts' 'target' values differ in shape or are not numbers; give each "
                            "prompt a number or a list of numbers of the same length") from None
    text_prompts = all(isinstance(e["clean"], str) for e in entries)
    return Task(
        name=str(spec.get("name") or path.stem),
        clean=tensors["clean"], corrupted=tensors["corrupted"], answers=tensors["answers"],
        wrong_answers=tensors["wrong_answers"], answer_pos=tensors["answer_pos"],
        metric=spec.get("metric", _default_metric(tensors["wrong_answers"])), prompts=texts if text_prompts else None,
        corrupted_prompts=corrupted_texts if text_prompts else None,
        d_vocab=len(tok) if tok is not None else None, data=data,
        position_reduce=spec.get("position_reduce", "mean"),
        # Lengths were checked per prompt above; no pad id in meta, since a BOS-less tokenizer's
        # fallback pad (id 0) is an ordinary token that prompts may contain.
        meta={"source": str(path), "prepend_bos": bool(prepend_bos)},
    )


def _default_metric(wrong_answers) -> str:
    """The logit difference when wrong answers are given, else the answers' log-probability."""
    return "logit_diff" if wrong_answers is not None and bool((wrong_answers != PAD_ANSWER).any()) else "answer_logprob"


def _has_text(value) -> bool:
    return isinstance(value, list) and any(isinstance(v, str) or _has_text(v) for v in value)


def _tokens(value, tok, prepend_bos: bool, where: str) -> list[int]:
    if isinstance(value, str):
        if not value:
            raise TaskError(f"{where}: the prompt is empty; give some text")
        return encode(tok, value, prepend_bos)
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        for v in value:
            _check_id(v, where)
        return [int(v) for v in value]
    raise TaskError(f"{where}: expected prompt text or a non-empty list of token ids, got {value!r}")


def _check_id(value: int, where: str) -> None:
    if not 0 <= value < 2**63:
        raise TaskError(f"{where}: {value} is not a token id; ids are whole numbers from 0 to the model's "
                        "vocabulary size - 1")


def _token(value, tok, where: str) -> int:
    if _is_int(value):
        _check_id(value, where)
        return int(value)
    if isinstance(value, str):
        ids = tok.encode(value, add_special_tokens=False)
        if len(ids) != 1:
            raise TaskError(f"{where}: {value!r} is {len(ids)} tokens ({ids}) with this tokenizer; an answer must be "
                            "one token (mind the leading space, e.g. ' Mary'), or give its token id")
        return int(ids[0])
    raise TaskError(f"{where}: expected answer text or a token id, got {value!r}")


def _answers(value, tok, k: int | None, where: str, allow_empty: bool = False) -> list:
    """``[n]`` ids for one position, ``[k][n]`` for ``k`` positions."""
    if not isinstance(value, list):
        value = [value]
    if k is None:
        ids = [_token(v, tok, f"{where}[{j}]") for j, v in enumerate(value)]
        if not ids and not allow_empty:
            raise TaskError(f"{where}: no answer given; give at least one")
        return ids
    if not value and allow_empty:
        return []
    if len(value) != k:
        raise TaskError(f"{where}: {len(value)} entries for {k} answer positions; give one per position "
                        "(a token, or a list of tokens)")
    return [[_token(a, tok, f"{where}[{j}]") for a in (v if isinstance(v, list) else [v])] for j, v in enumerate(value)]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_safetensors(path: Path) -> Task:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as exc:
        raise TaskError(f"{path}: not a readable safetensors file ({exc}); write it with "
                        "safetensors.torch.save_file({'clean': ..., 'corrupted': ..., 'answers': ...}, path)") from None
    for key in ("clean", "answers"):
        if key not in tensors:
            raise TaskError(f"{path}: no {key!r} tensor (it has {sorted(tensors)}); a task file needs 'clean' "
                            "[batch, pos] and 'answers' int tensors")
    given = {k: tensors.pop(k) for k in TENSOR_KEYS if k in tensors}
    for key, value in given.items():
        if value.dtype.is_floating_point:
            raise TaskError(f"{path}: {key!r} is {value.dtype}; token ids and positions must be integer tensors")
    data = dict(tensors)
    unknown_meta = [k for k in meta if k not in ("name", "metric", "position_reduce")]
    if unknown_meta:
        raise TaskError(f"{path}: unknown metadata key {unknown_meta[0]!r}; use name, metric, position_reduce")
    return Task(
        name=meta.get("name", path.stem), clean=given["clean"], corrupted=given.get("corrupted", given["clean"]),
        answers=given["answers"], wrong_answers=given.get("wrong_answers"), answer_pos=given.get("answer_pos"),
        metric=meta.get("metric", _default_metric(given.get("wrong_answers"))), position_reduce=meta.get("position_reduce", "mean"),
        data=data, meta={"source": str(path)},
    )
