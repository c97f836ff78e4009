"""Task builders that work with any model's tokenizer.

Each builder takes a model (its tokenizer is used) or a Hugging Face tokenizer, drops prompts
whose names / answers are not single tokens, and records how many it kept in
``task.meta["kept"]`` / ``task.meta["dropped"]`` (and logs it). Prompts are right-padded;
``answer_pos`` marks each prompt's last token.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitkit.errors import InputError
from circuitkit.tasks.rasp import rasp_task
from circuitkit.tasks.task import PAD_ANSWER, Task, TaskError
from circuitkit.tokenizers import (
    continuation_ids,
    encode,
    ordinary_token_ids,
    pad_id,
    python_docs_corpus,
    single_token_id,
    tokenizer_of,
)

log = logging.getLogger(__name__)

# More prompts than any circuit method needs (hundreds to a few thousand); beyond this a typo is
# far likelier than intent, and the tokens and logits would not fit in memory.
MAX_PROMPTS = 100_000


def check_n_prompts(name: str, n_prompts, tok, seq_len: int) -> None:
    """``TaskError`` for a prompt count that is not a positive integer, or one so large that the
    task's tokens and one unbatched forward pass's logits would not fit (with the estimate)."""
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int):
        raise TaskError(f"{name}: n_prompts must be a whole number of prompts, got {n_prompts!r}")
    if n_prompts < 1:
        raise TaskError(f"{name}: n_prompts is {n_prompts}; ask for at least 1 prompt (16-256 is typical)")
    if n_prompts > MAX_PROMPTS:
        tokens_gb = 2 * n_prompts * seq_len * 8 / 1e9  # clean + corrupted int64 ids
        logits_gb = n_prompts * seq_len * len(tok) * 4 / 1e9  # float32 logits of one full forward pass
        raise TaskError(
            f"{name}: n_prompts={n_prompts:,} is more than the {MAX_PROMPTS:,} allowed: its prompts alone hold "
            f"~{tokens_gb:.1f} GB of token ids and one unbatched forward pass ~{logits_gb:,.0f} GB of logits "
            f"(~{seq_len} tokens x {len(tok):,} vocabulary); circuit methods need tens to a few thousand prompts, "
            f"so ask for n_prompts <= {MAX_PROMPTS:,}"
        )


NAMES = (
    "Mary John Alice Bob Tom James Sarah Michael Anna David Laura Paul Kate Mark Lisa Peter Emma "
    "Jack Susan George Linda Frank Helen Henry Ruth Carl Jane Adam Rose Sam"
).split()
PLACES = "store park school garden house office station market".split()
OBJECTS = "drink book ball letter gift key apple ring".split()

IOI_TEMPLATES = (
    "When {A} and {B} went to the {PLACE}, {C} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {C} gave a {OBJECT} to",
    "Then, {A} and {B} had a long day at the {PLACE}. {C} gave a {OBJECT} to",
)

GREATER_THAN_NOUNS = "war deal trip project strike reign".split()
GREATER_THAN_TEMPLATE = "The {NOUN} lasted from the year {CENTURY}{YY} to the year {CENTURY}"

MC_CATEGORIES = {
    "animal": "dog cat horse lion tiger bird fish mouse".split(),
    "color": "red blue green yellow black white brown pink".split(),
    "fruit": "apple banana orange grape lemon cherry peach pear".split(),
    "tool": "hammer saw drill wrench knife spoon brush rope".split(),
}
MC_LETTERS = ("A", "B", "C", "D")

NEEDLE_TEMPLATE = "The secret code is {VALUE}."
NEEDLE_QUESTION = "What is the secret code? The secret code is"


@dataclass
class _Prompt:
    clean: list[int]
    corrupted: list[int]
    answers: list[int]
    wrong: list[int]
    positions: dict[str, int]
    text: str
    corrupted_text: str


def _finish(name: str, prompts: list[_Prompt], tok, requested: int, metric: str, meta: dict) -> Task:
    kept = len(prompts)
    fix = meta.pop("fix", "pass words that tokenize to one token each")
    if kept == 0:
        raise InputError(
            f"{name}: none of the {requested} prompts could be built with this tokenizer "
            f"({meta.get('why_dropped', 'words are not single tokens')}); {fix}"
        )
    if kept < requested:
        log.info("%s: kept %d of %d prompts (%s)", name, kept, requested, meta.get("why_dropped", "not single tokens"))
    width = max(len(p.clean) for p in prompts)
    pad = pad_id(tok)

    def padded(rows):
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

    def answers(rows):
        n = max(len(r) for r in rows)
        return torch.tensor([r + [PAD_ANSWER] * (n - len(r)) for r in rows], dtype=torch.long)

    positions = {key: torch.tensor([p.positions[key] for p in prompts]) for key in prompts[0].positions}
    return Task(
        name=name,
        clean=padded([p.clean for p in prompts]),
        corrupted=padded([p.corrupted for p in prompts]),
        answers=answers([p.answers for p in prompts]),
        wrong_answers=answers([p.wrong for p in prompts]),
        answer_pos=torch.tensor([len(p.clean) - 1 for p in prompts]),
        metric=metric,
        positions=positions,
        prompts=[p.text for p in prompts],
        corrupted_prompts=[p.corrupted_text for p in prompts],
        d_vocab=len(tok),
        meta={"kept": kept, "dropped": requested - kept, "requested": requested, "pad_token_id": pad, **meta},
    )


def _single_tokens(tok, words: Sequence[str], prefix: str = "and") -> dict[str, int]:
    ids = {w: single_token_id(tok, w, prefix) for w in words}
    return {w: i for w, i in ids.items() if i is not None}


def _word_position(tok, text: str, word_start: int, prepend_bos: bool) -> int:
    """Index of the token that starts at character ``word_start`` of ``text``."""
    return len(encode(tok, text[:word_start].rstrip(" "), prepend_bos)) if word_start else int(prepend_bos)


def ioi(
    model_or_tokenizer,
    n_prompts: int = 32,
    names: Sequence[str] = NAMES,
    templates: Sequence[str] = IOI_TEMPLATES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
    order: str = "mixed",
    seed: int = 0,
    prepend_bos: bool = True,
    metric: str = "logit_diff",
) -> Task:
    """Indirect object identification (Wang et al. 2022).

    Clean: "When Mary and John went to the store, John gave a drink to" -> " Mary" (IO) vs
    " John" (S). ``order`` is ``"ABBA"``, ``"BABA"`` or ``"mixed"`` (alternating). The corrupted
    prompt replaces all three names with fresh ones (the "ABC" distribution), so neither answer
    is supported by context. Positions: ``IO``, ``S1``, ``S2``, ``END``.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:ioi-trained")
        >>> task = ck.ioi(model, n_prompts=8)
        >>> task.prompts[0]
        'When Adam and Kate went to the store, Kate gave a gift to'
        >>> model.tokenizer.decode(task.answers[0]), model.tokenizer.decode(task.wrong_answers[0])
        ('Adam', 'Kate')
    """
    if order not in ("ABBA", "BABA", "mixed"):
        raise InputError(f"order must be 'ABBA', 'BABA' or 'mixed', got {order!r}")
    tok = tokenizer_of(model_or_tokenizer)
    check_n_prompts("ioi", n_prompts, tok, 20)
    name_ids = _single_tokens(tok, names)
    usable = [n for n in names if n in name_ids]
    if len(usable) < 5:
        raise InputError(
            f"ioi: only {len(usable)} of the {len(names)} names are single tokens for this tokenizer "
            f"({usable}); pass names=[...] with at least 5 single-token names"
        )
    rng = random.Random(seed)
    prompts: list[_Prompt] = []
    for i in range(n_prompts):
        template = templates[i % len(templates)]
        io, s, c1, c2, c3 = rng.sample(usable, 5)
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)
        first, second = (io, s) if abba else (s, io)
        fill = {"PLACE": rng.choice(places), "OBJECT": rng.choice(objects)}
        text = template.format(A=first, B=second, C=s, **fill)
        corrupted_text = template.format(A=c1, B=c2, C=c3, **fill)
        clean_ids = encode(tok, text, prepend_bos)
        corrupted_ids = encode(tok, corrupted_text, prepend_bos)
        if len(clean_ids) != len(corrupted_ids):
            continue
        end = len(clean_ids) - 1
        # Name positions: where each name's token sits (found by prefix tokenization).
        a_start = template.index("{A}")
        pos_a = _word_position(tok, text, a_start, prepend_bos)
        pos_b = _word_position(tok, text, text.index(second, a_start + len(first)), prepend_bos)
        pos_s2 = _word_position(tok, text, text.rindex(s), prepend_bos)
        prompts.append(_Prompt(
            clean_ids, corrupted_ids, [name_ids[io]], [name_ids[s]],
            {"IO": pos_a if abba else pos_b, "S1": pos_b if abba else pos_a, "S2": pos_s2, "END": end},
            text, corrupted_text,
        ))
    return _finish("ioi", prompts, tok, n_prompts, metric, {"order": order, "seed": seed, "why_dropped": "prompt lengths differ"})


def induction(
    model_or_tokenizer,
    n_prompts: int = 32,
    seq_len: int = 10,
    seed: int = 0,
    token_ids: Sequence[int] | None = None,
    prepend_bos: bool = True,
    metric: str = "logit_diff",
) -> Task:
    """Induction on repeated random tokens: ``[BOS] r1..rL r1..r(L-1)`` -> ``rL``.

    Corrupted: the first half is replaced by other random tokens, so nothing can be copied.
    The wrong answer is a random token absent from the prompt. Positions: ``first`` (start of
    the first copy), ``second`` (start of the repeat), ``END``.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.induction(model, n_prompts=4, seq_len=3)
        >>> task.prompts[0]
        '<bos> garden planet forest garden planet'
        >>> model.tokenizer.decode(task.answers[0])
        'forest'
    """
    tok = tokenizer_of(model_or_tokenizer)
    check_n_prompts("induction", n_prompts, tok, 2 * seq_len)
    pool = list(token_ids) if token_ids is not None else ordinary_token_ids(tok)
    outside = [t for t in pool if not 0 <= t < len(tok)]
    if outside:
        raise InputError(f"induction: token_ids {outside[:5]} are outside the tokenizer's vocabulary of {len(tok)} "
                         f"(ids 0..{len(tok) - 1}); pass ids of this model's tokens")
    if len(pool) < 2 * seq_len + 1:
        raise InputError(f"induction: need at least {2 * seq_len + 1} distinct tokens to sample from, got {len(pool)}")
    if seq_len < 2:
        raise InputError("induction: seq_len must be at least 2")
    rng = random.Random(seed)
    bos = [encode(tok, "", True)[0]] if prepend_bos else []
    prompts = []
    for _ in range(n_prompts):
        draw = rng.sample(pool, 2 * seq_len + 1)
        seq, other, wrong = draw[:seq_len], draw[seq_len: 2 * seq_len], draw[-1]
        clean = bos + seq + seq[:-1]
        corrupted = bos + other + seq[:-1]
        off = len(bos)
        prompts.append(_Prompt(clean, corrupted, [seq[-1]], [wrong],
                               {"first": off, "second": off + seq_len, "END": len(clean) - 1},
                               tok.decode(clean), tok.decode(corrupted)))
    return _finish("induction", prompts, tok, n_prompts, metric, {"seq_len": seq_len, "seed": seed})


def greater_than(
    model_or_tokenizer,
    n_prompts: int = 32,
    century: int = 17,
    nouns: Sequence[str] = GREATER_THAN_NOUNS,
    template: str = GREATER_THAN_TEMPLATE,
    seed: int = 0,
    prepend_bos: bool = True,
    metric: str = "logit_diff",
) -> Task:
    """Greater-than over years (Hanna et al. 2023): "... from the year 1732 to the year 17" ->
    any two-digit ``YY > 32`` (answers) vs ``YY <= 32`` (wrong answers).

    Corrupted: the start year's last two digits become ``01``, which no answer can undercut.
    Two-digit chunks must be single tokens after the century (true for GPT-2's tokenizer and the
    zoo's word-level tokenizer); start years whose chunk is not are dropped.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:ioi-trained")
        >>> task = ck.greater_than(model, n_prompts=8)
        >>> task.prompts[0]
        'The project lasted from the year 1751 to the year 17'
        >>> task.answers.shape  # every year above 51 is a right answer
        torch.Size([8, 92])
    """
    tok = tokenizer_of(model_or_tokenizer)
    check_n_prompts("greater_than", n_prompts, tok, 16)
    prefix = template.split("{CENTURY}{YY}")[0].format(NOUN=nouns[0]) + str(century)
    yy_ids = {}
    for yy in range(100):
        ids = continuation_ids(tok, prefix, f"{yy:02d}", sep="")
        if len(ids) == 1:
            yy_ids[yy] = ids[0]
    if len(yy_ids) < 50:
        raise InputError(
            f"greater_than: only {len(yy_ids)} of the two-digit numbers 00-99 are single tokens after "
            f"'{century}' with this tokenizer; greater-than needs a tokenizer that splits years as "
            "century + two digits (GPT-2 style)"
        )
    rng = random.Random(seed)
    candidates = [yy for yy in range(2, 99) if yy in yy_ids]
    prompts = []
    for _ in range(n_prompts):
        yy = rng.choice(candidates)
        noun = rng.choice(nouns)
        text = template.format(NOUN=noun, CENTURY=century, YY=f"{yy:02d}")
        corrupted_text = template.format(NOUN=noun, CENTURY=century, YY="01")
        clean_ids, corrupted_ids = encode(tok, text, prepend_bos), encode(tok, corrupted_text, prepend_bos)
        if len(clean_ids) != len(corrupted_ids):
            continue
        answers = [yy_ids[y] for y in range(yy + 1, 100) if y in yy_ids]
        wrong = [yy_ids[y] for y in range(0, yy + 1) if y in yy_ids]
        if not answers or not wrong:
            continue
        year_pos = len(encode(tok, text.rsplit(str(century), 2)[0] + str(century), prepend_bos))
        prompts.append(_Prompt(clean_ids, corrupted_ids, answers, wrong,
                               {"YY": year_pos, "END": len(clean_ids) - 1}, text, corrupted_text))
    return _finish("greater_than", prompts, tok, n_prompts, metric,
                   {"century": century, "seed": seed, "why_dropped": "the start year splits differently from 01"})


def multiple_choice(
    model_or_tokenizer,
    n_prompts: int = 32,
    categories: dict[str, Sequence[str]] | None = None,
    letters: Sequence[str] = MC_LETTERS,
    seed: int = 0,
    prepend_bos: bool = True,
    metric: str = "logit_diff",
) -> Task:
    """Multiple-choice letter answering: "Which is a fruit? A. dog B. pear C. red D. saw Answer:" -> " B".

    Corrupted: the same options with the correct one moved to another letter; the wrong answer
    is that letter, so the metric measures whether the model tracks the option's position.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:ioi-trained")
        >>> task = ck.multiple_choice(model, n_prompts=8)
        >>> task.prompts[0]
        'Which is a tool? A. brown B. rope C. pear D. tiger Answer:'
        >>> model.tokenizer.decode(task.answers[0])
        'B'
    """
    tok = tokenizer_of(model_or_tokenizer)
    check_n_prompts("multiple_choice", n_prompts, tok, 20)
    categories = dict(categories or MC_CATEGORIES)
    if len(categories) < len(letters):
        raise InputError(f"multiple_choice: need at least {len(letters)} categories for {len(letters)} options")
    letter_ids = _single_tokens(tok, letters, prefix="Answer:")
    if len(letter_ids) != len(letters):
        raise InputError(f"multiple_choice: letters {sorted(set(letters) - set(letter_ids))} are not single tokens after 'Answer:'")
    rng = random.Random(seed)
    prompts = []
    for _ in range(n_prompts):
        cats = rng.sample(sorted(categories), len(letters))
        target = cats[0]
        options = [rng.choice(list(categories[c])) for c in cats]
        order = list(range(len(letters)))
        rng.shuffle(order)
        right = order.index(0)
        alt = order[:]
        swap = rng.choice([i for i in range(len(letters)) if i != right])
        alt[right], alt[swap] = alt[swap], alt[right]

        text, corrupted_text = (_mc_prompt(target, options, perm, letters) for perm in (order, alt))
        clean_ids, corrupted_ids = encode(tok, text, prepend_bos), encode(tok, corrupted_text, prepend_bos)
        if len(clean_ids) != len(corrupted_ids):
            continue
        prompts.append(_Prompt(clean_ids, corrupted_ids, [letter_ids[letters[right]]], [letter_ids[letters[swap]]],
                               {"END": len(clean_ids) - 1}, text, corrupted_text))
    return _finish("multiple_choice", prompts, tok, n_prompts, metric,
                   {"seed": seed, "why_dropped": "options tokenize to different lengths"})


def _mc_prompt(target: str, options: Sequence[str], perm: Sequence[int], letters: Sequence[str]) -> str:
    body = " ".join(f"{letters[slot]}. {options[perm[slot]]}" for slot in range(len(letters)))
    return f"Which is a {target}? {body} Answer:"


def _default_haystack() -> str:
    return python_docs_corpus(max_chars=60_000)


DISTRACTOR_TEMPLATE = "The old code is {VALUE}."
KEYED_TEMPLATE = "The {KEY} code is {VALUE}."
KEYED_QUESTION = "What is the {KEY} code? The {KEY} code is"


def needle_haystack_ids(tok, haystack) -> list[int]:
    """Token ids of a needle haystack: text, a list of texts (joined by spaces), token ids (a
    list of ints or a 1-D tensor), or a list of token-id documents (concatenated); None: the
    bundled corpus (Python's docstrings)."""
    if haystack is None:
        haystack = _default_haystack()
    if isinstance(haystack, torch.Tensor):
        haystack = haystack.reshape(-1).tolist()
    if isinstance(haystack, str):
        if not haystack.strip():
            raise InputError("needle: the haystack is empty; pass haystack text (a few thousand characters)")
        return list(tok.encode(haystack, add_special_tokens=False))
    items = list(haystack)
    if not items:
        raise InputError("needle: the haystack is empty; pass text, a list of texts or token ids")
    if all(isinstance(x, str) for x in items):
        return needle_haystack_ids(tok, " ".join(x.strip() for x in items))
    if all(isinstance(x, (list, tuple, torch.Tensor)) for x in items):
        return [int(t) for doc in items for t in (doc.reshape(-1).tolist() if isinstance(doc, torch.Tensor) else doc)]
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return [int(x) for x in items]
    raise InputError("needle: haystack must be text, a list of texts, token ids or a list of token-id documents; "
                     f"got a list of {sorted({type(x).__name__ for x in items})}")


def needle_spread(depth: float, n: int) -> list[float]:
    """Depths of ``n`` needles: the asked one at ``depth``, the others evenly spread after it
    (wrapping round): ``(depth + j / n) mod 1``."""
    return [depth] + [(depth + j / n) % 1.0 for j in range(1, n)]


def place_needles(tok, hay_ids: Sequence[int], length: int, needles: Sequence[tuple[float, list[int]]],
                  question_ids: Sequence[int], prepend_bos: bool, snap: bool = True) -> tuple[list[int], list[int]] | None:
    """``hay_ids`` cut so that the needles (``(depth, token ids)``) and the question make
    ``length`` tokens, each needle inserted at its depth of the haystack, moved back to a sentence
    boundary (a token ending in '.') unless ``snap`` is False (a haystack without sentences, e.g.
    random token ids). Returns the ids and each needle's first position (in the order given), or
    None when it does not fit."""
    n_bos = int(prepend_bos)
    n_hay = length - n_bos - sum(len(ids) for _, ids in needles) - len(question_ids)
    if n_hay < 1 or len(hay_ids) < n_hay:
        return None
    body = list(hay_ids[:n_hay])
    cuts = []
    for depth, _ in needles:
        cut = int(round(depth * n_hay))
        while snap and 0 < cut < n_hay and not tok.decode(body[cut - 1: cut]).rstrip().endswith("."):
            cut -= 1
        cuts.append(cut)
    order = sorted(range(len(needles)), key=lambda j: (cuts[j], needles[j][0], j))
    ids = [encode(tok, "", True)[0]] if prepend_bos else []
    starts = [0] * len(needles)
    done = 0
    for j in order:
        ids += body[done: cuts[j]]
        done = cuts[j]
        starts[j] = len(ids)
        ids += needles[j][1]
    return ids + body[done:] + list(question_ids), starts


def _find(ids: Sequence[int], part: Sequence[int]) -> int | None:
    for offset in range(len(ids) - len(part) + 1):
        if list(ids[offset: offset + len(part)]) == list(part):
            return offset
    return None


def needle_variant_prompt(tok, hay_ids, length: int, depth: float, values: Sequence[str], needle_template: str,
                          question: str, prepend_bos: bool = True, keys: Sequence[str] | None = None,
                          paraphrase: str | None = None, distractor_template: str = DISTRACTOR_TEMPLATE,
                          snap: bool = True):
    """One needle prompt with one or several needles, the first one asked.

    ``values[j]`` is needle ``j``'s value; needle 0 sits at ``depth``, the others at
    `needle_spread`'s depths. With ``keys`` (one per needle; RULER's multi-key) every needle is
    ``needle_template`` (or ``paraphrase``) with its key and value and the question names key 0;
    without, the distractor needles are ``distractor_template``. ``paraphrase``: the asked needle's
    wording when it differs from the question's (the question stays ``question``). ``snap``: move
    needles back to sentence boundaries (`place_needles`).

    Returns ``(ids, spans, needles, text)`` with ``spans[j]`` needle ``j``'s value span (start,
    end exclusive) and ``needles[j]`` a dict (``depth``, ``key``, ``value``, ``start``: the
    needle sentence's first position, ``value_start`` / ``value_end``, ``key_start``); None
    when it does not fit or a value is not found in its needle.
    """
    n = len(values)
    if keys is not None and len(keys) != n:
        raise InputError(f"needle: {len(keys)} keys for {n} needles; give one key per needle")
    wording = paraphrase if paraphrase is not None else needle_template
    asked_key = keys[0] if keys is not None else None
    question_text = " " + (question.format(KEY=asked_key) if keys is not None else question)
    question_ids = list(tok.encode(question_text, add_special_tokens=False))
    value_ids = [continuation_ids(tok, question_text.strip(), v) for v in values]
    if not all(value_ids):
        return None
    needles, key_ids = [], []
    for j, (d, value) in enumerate(zip(needle_spread(depth, n), values, strict=True)):
        if keys is not None:
            text = " " + wording.format(KEY=keys[j], VALUE=value)
            key_ids.append(continuation_ids(tok, wording.split("{KEY}")[0].rstrip(), keys[j]) or None)
        else:
            text = " " + (wording if j == 0 else distractor_template).format(VALUE=value)
        needles.append((d, list(tok.encode(text, add_special_tokens=False))))
    placed = place_needles(tok, hay_ids, length, needles, question_ids, prepend_bos, snap)
    if placed is None:
        return None
    ids, starts = placed
    spans, info = [], []
    for j, ((d, needle_ids), start) in enumerate(zip(needles, starts, strict=True)):
        offset = _find(needle_ids, value_ids[j])
        if offset is None:
            return None
        record = {"depth": d, "key": keys[j] if keys is not None else None, "value": values[j], "start": start,
                  "value_start": start + offset, "value_end": start + offset + len(value_ids[j]), "key_start": None}
        if keys is not None and key_ids[j]:
            key_offset = _find(needle_ids, key_ids[j])
            record["key_start"] = None if key_offset is None else start + key_offset
        spans.append((record["value_start"], record["value_end"]))
        info.append(record)
    return ids, spans, info, tok.decode(ids)


def needle(
    model_or_tokenizer,
    context_lengths: Sequence[int] = (64,),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    values: Sequence[str] = ("7", "42", "19", "88"),
    needle_template: str = NEEDLE_TEMPLATE,
    question: str = NEEDLE_QUESTION,
    haystack: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | None = None,
    prepend_bos: bool = True,
    metric: str = "logit_diff",
    n_needles: int = 1,
    keys: Sequence[str] | None = None,
    paraphrase: str | None = None,
    distractor_template: str = DISTRACTOR_TEMPLATE,
) -> Task:
    """Needle in a haystack: the needle sentence sits at each depth of a haystack cut to each
    context length, followed by the question. One prompt per (length, depth, value).

    The answer is the first token of the needle's value; the corrupted prompt carries another
    value (the next in ``values``), which is the wrong answer. ``positions["needle_start"]`` /
    ``["needle_end"]`` give the value's token span (end exclusive); ``meta["answer_tokens"]`` the
    value's full token ids per prompt (multi-token values). Prompts are cut to exactly the
    context length in tokens. The needle is moved back to a sentence boundary.

    Variants: ``haystack`` is text, a list of texts, or token ids (`needle_haystack_ids`).
    ``n_needles`` > 1 inserts that many needles, the asked one at the depth and the others spread
    evenly after it (`needle_spread`), each with its own value (the next ones in ``values``);
    without ``keys`` the others read ``distractor_template``. ``keys`` (RULER's multi-key): one
    needle per key (``n_needles`` of them, default all keys), ``needle_template`` and ``question``
    hold ``{KEY}`` (by default ``KEYED_TEMPLATE`` / ``KEYED_QUESTION``), prompt ``i`` asks key
    ``i mod n_needles`` and the answer is that key's value. ``paraphrase``: the needle's wording
    (with ``{VALUE}``, and ``{KEY}`` with keys) when the question is worded differently.
    ``meta["needles"]`` lists each prompt's needles (`needle_variant_prompt`), the asked first.
    A haystack without a '.' (e.g. random token ids) keeps the exact depths.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:needle-trained")
        >>> task = ck.needle(model, context_lengths=(64,), depths=(0.0, 1.0), values=("zorbat", "quindle"))
        >>> task
        Task('needle', prompts=4, seq_len=64, metric='logit_diff')
        >>> task.prompts[0][:32]
        '<bos> The secret code is zorbat.'
        >>> keyed = ck.needle(model, context_lengths=(96,), depths=(0.5,), values=("zorbat", "quindle"),
        ...                   keys=("red", "blue"))
        >>> [(n["key"], n["value"]) for n in keyed.meta["needles"][1]]  # prompt 1 asks blue
        [('blue', 'quindle'), ('red', 'zorbat')]
    """
    tok = tokenizer_of(model_or_tokenizer)
    hay_ids = needle_haystack_ids(tok, haystack)
    if len(values) < 2:
        raise InputError("needle: give at least two needle values (the corrupted prompt needs another value)")
    if isinstance(n_needles, bool) or not isinstance(n_needles, int) or n_needles < 1:
        raise InputError(f"needle: n_needles must be a whole number >= 1, got {n_needles!r}")
    if keys is not None:
        keys = list(keys)
        if len(keys) < 2 or len(set(keys)) != len(keys):
            raise InputError(f"needle: give at least two distinct keys (one asked, the others distractors), got {keys}")
        n_needles = len(keys) if n_needles == 1 else n_needles
        if n_needles > len(keys):
            raise InputError(f"needle: n_needles={n_needles} but only {len(keys)} keys; give one key per needle")
        if needle_template == NEEDLE_TEMPLATE and question == NEEDLE_QUESTION:
            needle_template, question = KEYED_TEMPLATE, KEYED_QUESTION
        for name, text in (("needle_template", needle_template), ("question", question), ("paraphrase", paraphrase)):
            if text is not None and "{KEY}" not in text:
                raise InputError(f"needle: with keys, {name} must contain '{{KEY}}' (got {text!r})")
    if n_needles > len(values):
        raise InputError(f"needle: {n_needles} needles need at least {n_needles} values, got {len(values)}")
    for name, text in (("needle_template", needle_template), ("paraphrase", paraphrase),
                       ("distractor_template", distractor_template if n_needles > 1 and keys is None else None)):
        if text is not None and "{VALUE}" not in text:
            raise InputError(f"needle: {name} must contain '{{VALUE}}'")
    prompts: list[_Prompt] = []
    spans: list[list[int]] = []
    records: list[list[dict]] = []
    snap = "." in tok.decode(hay_ids)  # a haystack without sentences (e.g. random ids) keeps exact depths
    for length in context_lengths:
        for depth in depths:
            if not 0.0 <= depth <= 1.0:
                raise InputError(f"needle: depth {depth} is outside [0, 1]")
            for vi in range(len(values)):
                chosen = [values[(vi + j) % len(values)] for j in range(n_needles)]
                other = values[(vi + 1) % len(values)]
                asked = None if keys is None else [keys[(vi + j) % n_needles] for j in range(n_needles)]
                kw = {"keys": asked, "paraphrase": paraphrase, "distractor_template": distractor_template, "snap": snap}
                built = needle_variant_prompt(tok, hay_ids, length, depth, chosen, needle_template, question,
                                              prepend_bos, **kw)
                alt = needle_variant_prompt(tok, hay_ids, length, depth, [other, *chosen[1:]], needle_template,
                                            question, prepend_bos, **kw)
                if built is None or alt is None:
                    continue
                (ids, where, info, text), (alt_ids, _, alt_info, alt_text) = built, alt
                value_ids = ids[where[0][0]: where[0][1]]
                alt_value_ids = alt_ids[alt_info[0]["value_start"]: alt_info[0]["value_end"]]
                if len(ids) != len(alt_ids) or value_ids[0] == alt_value_ids[0]:
                    continue
                start, end = where[0]
                prompts.append(_Prompt(ids, alt_ids, [value_ids[0]], [alt_value_ids[0]],
                                       {"needle_start": start, "needle_end": end, "END": len(ids) - 1}, text, alt_text))
                spans.append(value_ids)
                records.append(info)
    requested = len(context_lengths) * len(depths) * len(values)
    task = _finish("needle", prompts, tok, requested, metric,
                   {"context_lengths": list(context_lengths), "depths": list(depths),
                    "why_dropped": "the haystack is too short or values tokenize to different lengths",
                    "fix": "use a model whose tokenizer covers the haystack, needle and question (e.g. "
                           "zoo:retrieval-handbuilt), shorter context lengths, or values that tokenize alike"})
    task.meta["answer_tokens"] = spans
    task.meta["needles"] = records
    task.meta["per_prompt"] = ["answer_tokens", "needles"]
    return task


def needle_prompt(tok, hay_ids, length, depth, value, needle_template, question, prepend_bos):
    """One needle prompt: ``hay_ids`` cut to ``length`` tokens with the needle sentence inserted at
    ``depth`` (moved back to a sentence boundary), then the question; the ``needle`` builder's and
    the needle-trained recipe's prompts are both made here. None when the prompt does not fit."""
    needle_text = " " + needle_template.format(VALUE=value)
    question_text = " " + question
    needle_ids = tok.encode(needle_text, add_special_tokens=False)
    question_ids = tok.encode(question_text, add_special_tokens=False)
    value_ids = continuation_ids(tok, question, value)
    n_bos = int(prepend_bos)
    n_hay = length - n_bos - len(needle_ids) - len(question_ids)
    if n_hay < 1 or len(hay_ids) < n_hay or not value_ids:
        return None
    body = hay_ids[:n_hay]
    cut = int(round(depth * n_hay))
    # Move the needle back to a sentence boundary (a token ending in '.').
    while 0 < cut < n_hay and not tok.decode(body[cut - 1: cut]).rstrip().endswith("."):
        cut -= 1
    ids = ([encode(tok, "", True)[0]] if prepend_bos else []) + body[:cut] + needle_ids + body[cut:] + question_ids
    # Locate the value's tokens inside the needle.
    start = None
    for offset in range(len(needle_ids) - len(value_ids) + 1):
        if needle_ids[offset: offset + len(value_ids)] == value_ids:
            start = n_bos + cut + offset
            break
    if start is None:
        return None
    return ids, start, start + len(value_ids), value_ids, tok.decode(ids)


BUILDERS = {
    "ioi": ioi,
    "induction": induction,
    "greater_than": greater_than,
    "multiple_choice": multiple_choice,
    "needle": needle,
    "tracr": rasp_task,
}


def builder_parameters(name: str) -> list[str]:
    """The keyword parameters builder ``name`` takes (all but the model / tokenizer)."""
    import inspect

    if name not in BUILDERS:
        raise TaskError(f"unknown task {name!r}; choose one of {sorted(BUILDERS)} or give a task file "
                        "(.json / .yaml / .safetensors)")
    return [p for p in inspect.signature(BUILDERS[name]).parameters if p != "model_or_tokenizer"]


def check_builder_params(name: str, params: dict) -> None:
    """``TaskError`` naming a parameter builder ``name`` does not take (and the ones it does), or
    a value that does not fit the parameter's type or range (naming the type and the value)."""
    import difflib
    import inspect

    accepted = builder_parameters(name)
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TaskError(f"task {name!r} takes no parameter {key!r}{hint}; its parameters are {accepted}")
    signature = inspect.signature(BUILDERS[name], eval_str=True)
    for key, value in params.items():
        expected = signature.parameters[key].annotation
        if key == "metric" and callable(value):  # a metric(logits, task) callable, as Task takes
            continue
        if expected is not inspect.Parameter.empty and not _fits(value, expected):
            what = "a whole number of prompts" if key == "n_prompts" else _describe(expected)
            raise TaskError(f"{name}: {key} must be {what}, got {value!r} ({type(value).__name__})")
        least = PARAMETER_MINIMUMS.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        if least is not None and any(v < least for v in values if v is not None):
            raise TaskError(f"{name}: {key} must be at least {least}, got {value!r}")


# The smallest value a builder parameter takes (each item, for a list); n_prompts is checked by
# `check_n_prompts`, which also caps it.
PARAMETER_MINIMUMS = {"seq_len": 2, "context_lengths": 1, "length": 1}


def _fits(value, expected) -> bool:
    """Whether ``value`` (as YAML / JSON give it) fits annotation ``expected``: ``bool`` is not an
    ``int``, a ``float`` must be finite (an ``int`` will do), a string is not a sequence of items."""
    import math
    import numbers
    import types
    import typing
    from collections.abc import Mapping

    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(expected))
    if expected is None or expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:  # numbers.Integral: numpy's integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (Sequence, list, tuple):
        args = typing.get_args(expected)
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if origin in (Mapping, dict):
        key_type, value_type = typing.get_args(expected) or (typing.Any, typing.Any)
        return isinstance(value, dict) and all(_fits(k, key_type) and _fits(v, value_type) for k, v in value.items())
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # typing.Any and anything else unchecked


def _describe(expected) -> str:
    """An annotation in words: ``Sequence[int] | None`` -> 'a list of whole numbers, or null'."""
    import types
    import typing
    from collections.abc import Mapping

    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return ", or ".join(_describe(option) for option in typing.get_args(expected))
    words = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string",
             type(None): "null"}
    if expected in words:
        return words[expected]
    if origin in (Sequence, list, tuple):
        args = typing.get_args(expected)
        item = _describe(args[0]) if args else "anything"
        return f"a list of {item.removeprefix('a ').removeprefix('an ')}s" if item.startswith("a") else f"a list ({item})"
    if origin in (Mapping, dict):
        key_type, value_type = typing.get_args(expected)
        return f"a mapping (keys: {_describe(key_type)}; values: {_describe(value_type)})"
    return getattr(expected, "__name__", str(expected))


def build_task(name: str, model_or_tokenizer, **params) -> Task:
    """Build a task by name (``ioi``, ``induction``, ``greater_than``, ``multiple_choice``, ``needle``,
    ``tracr``: a tracr-compiled RASP program's task, `circuitkit.tasks.rasp.rasp_task`).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.build_task("induction", model, n_prompts=8, seq_len=6)
        >>> task
        Task('induction', prompts=8, seq_len=12, metric='logit_diff')
    """
    check_builder_params(name, params)
    return BUILDERS[name](model_or_tokenizer, **params)


def default_words() -> list[str]:
    """Every word the builders' default templates use (for word-level zoo tokenizers)."""
    import re

    texts = [*IOI_TEMPLATES, GREATER_THAN_TEMPLATE, NEEDLE_TEMPLATE, NEEDLE_QUESTION, "Which is a ? Answer: ."]
    words: list[str] = []
    for text in texts:
        words += re.findall(r"[A-Za-z_]+|[^\sA-Za-z0-9_{}]", re.sub(r"\{[A-Z]+\}", " ", text))
    words += [*NAMES, *PLACES, *OBJECTS, *GREATER_THAN_NOUNS, *MC_LETTERS]
    for members in MC_CATEGORIES.values():
        words += members
    words += list(MC_CATEGORIES)
    words += [f"{i:02d}" for i in range(100)] + [str(i) for i in range(10)]
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)
