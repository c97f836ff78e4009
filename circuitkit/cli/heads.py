"""``circuitkit heads retrieval MODEL ...``, ``circuitkit heads score MODEL --kind ...`` and the KV-cache
commands (``needle-grid``, ``kv-compress``, ``duo-gates``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuitkit.cli.common import (
    add_model_argument,
    add_task_arguments,
    check_out_folder,
    finite_float,
    int_at_least,
    model_from_args,
    task_from_args,
    write_figure,
    write_table,
)
from circuitkit.errors import InputError, MissingFileError

COMMANDS = {"heads": "attention-head scores (retrieval, induction, locality...)"}


def register(sub) -> None:
    from circuitkit.heads.compress import DETECTORS, POLICIES
    from circuitkit.heads.patterns import PATTERN_KINDS

    heads = sub.add_parser("heads", help=COMMANDS["heads"],
                           description="Score every attention head of a model: retrieval heads on a "
                                       "needle-in-a-haystack task, or induction / previous-token / "
                                       "duplicate-token / locality / echo signatures.")
    hsub = heads.add_subparsers(dest="heads_command", metavar="HEADS_COMMAND")
    hsub.required = True

    ret = hsub.add_parser("retrieval", help="retrieval scores (Wu et al. 2024) on needle prompts",
                          description="Build needle-in-a-haystack prompts with MODEL's tokenizer and "
                                      "score every head by teacher forcing.")
    _common(ret)
    ret.add_argument("--task", default=None,
                     help="a needle task file (.json / .yaml / .safetensors) instead of built needle prompts; "
                          "it must carry needle_start / needle_end positions (default: the needle builder)")
    ret.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", dest="task_args",
                     help="a needle-builder parameter, repeatable, VALUE read as YAML (e.g. --task-arg "
                          "'haystack=Some text. More text.')")
    ret.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None,
                     help="start prompts with the tokenizer's BOS token (default: yes); --no-prepend-bos for "
                          "BOS-less tokenizers")
    ret.add_argument("--lengths", type=int_at_least(1), nargs="+", default=[64], help="context lengths in tokens")
    ret.add_argument("--depths", type=finite_float, nargs="+", default=[0.0, 0.5, 1.0], help="needle depths in [0, 1]")
    ret.add_argument("--values", nargs="+", default=None,
                     help="needle values (default: a zoo model's card, else the builder's)")
    ret.add_argument("--needle-template", default=None, help="needle sentence with {VALUE}")
    ret.add_argument("--question", default=None, help="question that ends right before the value")
    ret.add_argument("--haystack", type=Path, default=None, help="text file with the haystack (default: bundled)")
    ret.add_argument("--threshold", type=finite_float, default=0.1, help="retrieval-head threshold")
    ret.add_argument("--min-recall", type=finite_float, default=0.5, help="keep trials with ROUGE-1 recall above this")
    ret.add_argument("--causal", type=int, default=0, metavar="K",
                     help="also ablate the top-K heads vs K random non-retrieval heads and print the table")
    ret.add_argument("--n-random", type=int, default=5, help="random draws for --causal")
    ret.set_defaults(func=_cmd_retrieval)

    grid = hsub.add_parser(
        "needle-grid", help="needle accuracy by length and depth with a compressed KV cache",
        description="Find the needle at each context length and depth with the full KV cache and with "
                    "RazorAttention's cache (the kept heads full, every other head its first --sink tokens and "
                    "last --window), and print what each finds and how much of the cache it keeps.")
    add_model_argument(grid)
    grid.add_argument("--keep", default="retrieval",
                      help="heads that keep the full cache: 'retrieval' (those whose retrieval score on the same "
                           "needle prompts exceeds --threshold) or head ids, comma-separated (a1.h0,a1.h2)")
    grid.add_argument("--threshold", type=finite_float, default=0.1, help="retrieval-head threshold for --keep retrieval")
    grid.add_argument("--sink", type=int_at_least(0), default=4, help="first tokens every streamed head keeps")
    grid.add_argument("--window", type=int_at_least(1), default=64, help="recent tokens every streamed head keeps")
    grid.add_argument("--lengths", type=int_at_least(1), nargs="+", default=[64, 128, 256], help="context lengths")
    grid.add_argument("--depths", type=finite_float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                      help="needle depths in [0, 1]")
    grid.add_argument("--values", nargs="+", default=None,
                      help="needle values (default: a zoo needle model's card, else the builder's)")
    grid.add_argument("--haystack", type=Path, default=None,
                      help="haystack corpus: a text file, or a folder of .txt files (one document each), or a "
                           ".json file holding a list of token ids or of token-id documents (default: the zoo "
                           "model's haystack, else the bundled corpus)")
    grid.add_argument("--n-needles", type=int_at_least(1), default=1,
                      help="needles per prompt: the asked one at the depth, the others spread after it "
                           "(worded as --distractor-template without --keys)")
    grid.add_argument("--keys", nargs="+", default=None,
                      help="RULER multi-key: one needle per key ('The {KEY} code is {VALUE}.'), one key asked")
    grid.add_argument("--paraphrase", default=None,
                      help="the needle's wording when it differs from the question's: a template with {VALUE} "
                           "(and {KEY} with --keys)")
    grid.add_argument("--needle-template", default=None, help="needle sentence with {VALUE} (and {KEY} with --keys)")
    grid.add_argument("--question", default=None, help="question that ends right before the value ({KEY} with --keys)")
    grid.add_argument("--distractor-template", default=None, help="the other needles' sentence with {VALUE}")
    grid.add_argument("--batch-size", type=int_at_least(1), default=16, help="prompts per forward pass")
    grid.add_argument("--max-memory", type=finite_float, default=None,
                      help="memory budget in bytes (default: half the memory available); refused up front when "
                           "one prompt's layer does not fit")
    grid.add_argument("--out", type=Path, default=None, help="write the table as CSV (or .parquet)")
    grid.add_argument("--html", type=Path, default=None, help="write the accuracy heatmaps as HTML")
    grid.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    grid.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    grid.set_defaults(func=_cmd_needle_grid)

    kvc = hsub.add_parser(
        "kv-compress", help="needle accuracy vs kept KV cache: detected retrieval heads vs random heads",
        description="Score every head with --detector on needle prompts, then for each K build a cache policy "
                    "around the top-K key / value groups and around --n-random random sets of K groups, and "
                    "print needle accuracy and the share of the KV cache each keeps. --policy razor: the chosen "
                    "groups keep the full cache, the rest --sink + --window (--compensate: RazorAttention's "
                    "compensation token); --policy headkv: every group keeps its top tokens (HeadKV / SnapKV "
                    "selection) within --budget * (1 - --share), the chosen groups split the pooled rest.")
    add_model_argument(kvc)
    kvc.add_argument("--policy", choices=POLICIES, default="razor", help="the cache policy")
    kvc.add_argument("--detector", choices=DETECTORS, default="retrieval",
                     help="the head score that ranks key / value groups")
    kvc.add_argument("--ks", type=int_at_least(0), nargs="+", default=None,
                     help="numbers of key / value groups to choose (default 0, 1, 2, 4, ... all)")
    kvc.add_argument("--n-random", type=int_at_least(0), default=3, help="random head sets per K (one seed each)")
    kvc.add_argument("--seed", type=int, default=0, help="first random seed")
    kvc.add_argument("--sink", type=int_at_least(0), default=4, help="razor: first tokens a streamed head keeps")
    kvc.add_argument("--window", type=int_at_least(1), default=16, help="recent tokens every compressed head keeps")
    kvc.add_argument("--compensate", action="store_true", help="razor: add the compensation token to streamed heads")
    kvc.add_argument("--budget", type=int_at_least(0), default=16,
                     help="headkv: mean selected tokens per key / value group (besides the window)")
    kvc.add_argument("--share", type=finite_float, default=1.0,
                     help="headkv: share of each group's budget pooled for the chosen groups")
    kvc.add_argument("--lengths", type=int_at_least(1), nargs="+", default=[128], help="context lengths")
    kvc.add_argument("--depths", type=finite_float, nargs="+", default=[0.0, 0.5, 1.0], help="needle depths in [0, 1]")
    kvc.add_argument("--out", type=Path, default=None, help="write the table as CSV (or .parquet)")
    kvc.add_argument("--html", type=Path, default=None, help="write the accuracy vs kept-cache curve as HTML")
    kvc.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    kvc.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    kvc.set_defaults(func=_cmd_kv_compress)

    duo = hsub.add_parser(
        "duo-gates", help="DuoAttention's learned gates: which heads need the full KV cache",
        description="Train one gate per key / value head that mixes its full attention with its streaming "
                    "attention (first --sink tokens and last --window), the model frozen, on needle prompts: "
                    "distil the full model's final hidden state at the answer positions with an L1 penalty "
                    "(--sparsity) on the gates. Prints the gates (1: keeps the full cache) and can export them "
                    "for kvpress's DuoAttentionPress.")
    _common(duo)
    duo.add_argument("--lengths", type=int_at_least(1), nargs="+", default=[128], help="context lengths in tokens")
    duo.add_argument("--depths", type=finite_float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                     help="needle depths in [0, 1]")
    duo.add_argument("--steps", type=int_at_least(1), default=100, help="optimiser steps")
    duo.add_argument("--lr", type=finite_float, default=0.02, help="learning rate (DuoAttention: 0.02)")
    duo.add_argument("--sparsity", type=finite_float, default=0.5, help="weight of the gates' L1 penalty")
    duo.add_argument("--sink", type=int_at_least(0), default=4, help="first tokens a streaming head keeps")
    duo.add_argument("--window", type=int_at_least(1), default=16, help="recent tokens a streaming head keeps")
    duo.add_argument("--seed", type=int, default=0, help="seed of the batch order")
    duo.add_argument("--kvpress", type=Path, default=None, metavar="FOLDER",
                     help="also write the gates as a DuoAttention pattern folder for kvpress")
    duo.set_defaults(func=_cmd_duo_gates)

    score = hsub.add_parser("score", help="induction / previous-token / duplicate-token / locality / echo scores",
                            description="Score every head for one attention signature on repeated random tokens.")
    _common(score)
    score.add_argument("--kind", required=True, choices=PATTERN_KINDS, help="the attention signature to score")
    add_task_arguments(score, "repeated random tokens (--n-prompts, --seq-len, --repeats)", n_prompts=8)
    score.add_argument("--seq-len", type=int, default=20, help="random tokens per repeat")
    score.add_argument("--repeats", type=int, default=2, help="times the random tokens are repeated")
    score.add_argument("--sink", type=int, default=4, help="locality: number of sink tokens")
    score.add_argument("--window", type=int, default=8, help="locality: recent-window size")
    score.add_argument("--seed", type=int, default=0, help="seed of the random tokens")
    score.set_defaults(func=_cmd_score)


def _common(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="write scores as CSV (or .parquet)")
    parser.add_argument("--html", type=Path, default=None, help="write a layer x head heatmap as HTML")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int_at_least(1), default=16, help="prompts per forward pass")
    parser.add_argument("--top", type=int_at_least(0), default=10, help="print the top-N heads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _cmd_retrieval(args) -> int:
    from circuitkit.heads.causal import retrieval_causal_check
    from circuitkit.heads.retrieval import retrieval_scores
    from circuitkit.tasks.builders import build_task
    from circuitkit.tokenizers import read_text_file

    check_out_folder(args.out, args.html)
    params = _zoo_needle_params(args.model)
    for key in ("values", "needle_template", "question"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.haystack is not None:
        if not args.haystack.is_file():
            raise MissingFileError(f"no haystack file at {args.haystack}; pass a text file")
        params["haystack"] = read_text_file(args.haystack)  # a binary file is refused, naming it
    model = model_from_args(args)
    if args.task is not None:
        task = task_from_args(args, model)
    else:
        from circuitkit.cli.common import parse_task_args

        params.update(parse_task_args(args.task_args))
        if args.prepend_bos is not None:
            params["prepend_bos"] = args.prepend_bos
        for key in ("context_lengths", "depths", "metric"):
            if key in params:
                raise InputError(f"--task-arg {key!r}: set by this command (--lengths / --depths; metric accuracy); drop it")
        task = build_task("needle", model, context_lengths=args.lengths, depths=args.depths, metric="accuracy",
                          **params)  # each parameter checked against the builder's types first
    scores = retrieval_scores(model, task, batch_size=args.batch_size, threshold=args.threshold,
                              min_recall=args.min_recall, progress=not args.no_progress)
    print(f"kept {scores.meta['n_kept']} of {len(task)} trials; retrieval heads (> {args.threshold}): "
          f"{scores.meta['retrieval_heads']}")
    _print_top(scores, args.top)
    _write(scores, args, title=f"retrieval scores of {args.model}")
    if args.causal:
        check = retrieval_causal_check(model, task, scores, args.causal, args.n_random, threshold=args.threshold,
                                       batch_size=args.batch_size, progress=not args.no_progress)
        print(check.to_frame().to_string(index=False))
        print(check.summary())
    return 0


def _cmd_needle_grid(args) -> int:
    import pandas as pd

    from circuitkit.heads.kv import KVPolicy, check_grid_memory, needle_defaults, needle_grid
    from circuitkit.heads.retrieval import retrieval_heads, retrieval_scores
    from circuitkit.tasks.builders import needle

    check_out_folder(args.out, args.html)
    given = {key: getattr(args, key) for key in ("values", "needle_template", "question", "distractor_template")
             if getattr(args, key) is not None}
    if args.haystack is not None:
        given["haystack"] = _read_haystack(args.haystack)
    variant = {"n_needles": args.n_needles, "keys": args.keys, "paraphrase": args.paraphrase}
    model = model_from_args(args)
    params = {**needle_defaults(model), **given}
    check_grid_memory(model, args.lengths, args.max_memory)  # refused before any scoring
    if args.keep == "retrieval":  # retrieval heads found on single literal needles
        probe = needle(model, context_lengths=args.lengths, depths=args.depths, **params)
        keep = retrieval_heads(retrieval_scores(model, probe, progress=not args.no_progress,
                                                max_memory=args.max_memory), args.threshold)
        print(f"retrieval heads (> {args.threshold}): {keep or 'none'}")
    else:
        keep = [h.strip() for h in args.keep.split(",") if h.strip()]
    policy = KVPolicy.razor(model, keep, args.sink, args.window)
    kw = dict(batch_size=args.batch_size, max_memory=args.max_memory, progress=not args.no_progress, **variant, **params)
    table = pd.concat([needle_grid(model, None, args.lengths, args.depths, **kw).assign(policy="full cache"),
                       needle_grid(model, policy, args.lengths, args.depths, **kw).assign(policy="razor")])
    what = table[["n_needles", "n_keys", "needle"]].iloc[0]
    print(f"{what.n_needles} needle(s) per prompt, {what.n_keys or 'no'} keys, {what.needle} needle")
    print(table.pivot_table(index=["context_length", "depth"], columns="policy", values="accuracy").to_string())
    for name, part in table.groupby("policy", sort=False):
        print(f"{name}: accuracy {part.accuracy.mean():.3f}, KV cache kept {part.kv_kept.mean():.1%} "
              f"({len(keep)} heads full, others sink {args.sink} + window {args.window})"
              if name == "razor" else f"{name}: accuracy {part.accuracy.mean():.3f}")
    if args.out is not None:
        print(f"wrote {write_table(args.out, table)}")
    if args.html is not None:
        from circuitkit.viz.heads import needle_grid_figure

        print(f"wrote {write_figure(args.html, needle_grid_figure(table, f'needle grid of {args.model}'))}")
    return 0


def _read_haystack(path: Path):
    """A haystack corpus from a text file, a folder of .txt documents, or a .json list of token ids."""
    import json

    from circuitkit.tokenizers import read_text_file

    if path.is_dir():
        docs = sorted(path.glob("*.txt"))
        if not docs:
            raise MissingFileError(f"no .txt files in {path}; pass a folder of text documents or a text file")
        return [read_text_file(d) for d in docs]
    if not path.is_file():
        raise MissingFileError(f"no haystack file at {path}; pass a text file, a folder of .txt files or a .json "
                               "list of token ids")
    if path.suffix == ".json":
        try:
            ids = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not JSON ({e}); a .json haystack holds a list of token ids") from None
        if not isinstance(ids, list):
            raise InputError(f"{path} holds a {type(ids).__name__}; a .json haystack holds a list of token ids "
                             "or a list of lists of token ids")
        return ids
    return read_text_file(path)  # a binary file is refused, naming it


def _cmd_kv_compress(args) -> int:
    from circuitkit.heads.compress import kv_compress_curve
    from circuitkit.heads.kv import needle_defaults

    check_out_folder(args.out, args.html)
    model = model_from_args(args)
    params = needle_defaults(model)
    table = kv_compress_curve(model, args.policy, args.detector, args.ks, n_random=args.n_random, seed=args.seed,
                              sink=args.sink, window=args.window, compensate=args.compensate, budget=args.budget,
                              share=args.share, context_lengths=args.lengths, depths=args.depths,
                              progress=not args.no_progress, **params)
    summary = table.groupby(["k", "selection"]).agg(accuracy=("accuracy", "mean"), kv_kept=("kv_kept", "mean"))
    summary = summary.unstack("selection")
    summary.columns = [f"{value} ({selection})" for value, selection in summary.columns]
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    for k, heads in table[table.selection == "detector"][["k", "heads"]].values:
        print(f"  top {k} by {args.detector}: {heads or '-'}")
    if args.out is not None:
        print(f"wrote {write_table(args.out, table)}")
    if args.html is not None:
        from circuitkit.viz.heads_kv import kv_compress_figure

        title = f"{args.policy} cache of {args.model}: {args.detector} heads vs random heads"
        print(f"wrote {write_figure(args.html, kv_compress_figure(table, title))}")
    return 0


def _cmd_duo_gates(args) -> int:
    from circuitkit.heads.gates import duo_gates
    from circuitkit.heads.kv import needle_defaults
    from circuitkit.heads.kvpress import export_kvpress_duo
    from circuitkit.tasks.builders import needle

    check_out_folder(args.out, args.html)
    if args.kvpress is not None and not args.kvpress.parent.is_dir():
        raise InputError(f"--kvpress {args.kvpress}: its parent folder does not exist; create it or choose another")
    model = model_from_args(args)
    params = needle_defaults(model)
    task = needle(model, context_lengths=args.lengths, depths=args.depths, **params)
    gates = duo_gates(model, task, steps=args.steps, lr=args.lr, sparsity=args.sparsity, sink=args.sink,
                      window=args.window, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"gates after {args.steps} steps (distillation loss {gates.meta['distill_loss'][-1]:.4g}); "
          "1 keeps the full cache, 0 streams:")
    _print_top(gates, args.top)
    _write(gates, args, title=f"DuoAttention gates of {args.model}")
    if args.kvpress is not None:
        folder = export_kvpress_duo(gates, args.kvpress, model, sink_size=args.sink, recent_size=args.window)
        print(f"wrote {folder}")
    return 0


def _zoo_needle_params(spec: str) -> dict:
    """A zoo model trained / built on needle prompts keeps its own haystack, values and question."""
    from circuitkit.models.loading import parse_spec
    from circuitkit.models.zoo_store import zoo_card

    zoo = parse_spec(spec).zoo_name
    if zoo is None:
        return {}
    card = zoo_card(zoo)
    if card.task.get("builder") != "needle":
        return {}
    drop = ("context_lengths", "depths", "metric", "prepend_bos")
    return {k: v for k, v in card.task.get("params", {}).items() if k not in drop}


def _cmd_score(args) -> int:
    from circuitkit.heads.patterns import head_scores, repeated_tokens

    check_out_folder(args.out, args.html)
    model = model_from_args(args)
    if args.task is not None:
        tokens = task_from_args(args, model)  # a Task: each prompt scored up to its answer position
    else:
        if args.task_args:
            raise InputError("--task-arg needs --task (a builder or a task file) to apply to")
        n = args.n_prompts if args.n_prompts is not None else args.n_prompts_default
        bos = True if args.prepend_bos is None else args.prepend_bos
        tokens = repeated_tokens(model, n, args.seq_len, args.repeats, args.seed, prepend_bos=bos)
    scores = head_scores(model, tokens, args.kind, sink=args.sink, window=args.window,
                         batch_size=args.batch_size, progress=not args.no_progress)
    _print_top(scores, args.top)
    _write(scores, args, title=f"{args.kind} scores of {args.model}")
    return 0


def _print_top(scores, n: int) -> None:
    for label, value in scores.top(n, by_abs=False):
        print(f"  {label:10s} {value:.4f}")


def _write(scores, args, title: str) -> None:
    if args.out is not None:
        write_table(args.out, scores.to_frame())
        print(f"wrote {args.out}")
    if args.html is not None:
        from circuitkit.viz.heads import head_heatmap

        write_figure(args.html, head_heatmap(scores, title=title))
        print(f"wrote {args.html}")
