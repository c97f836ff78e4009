"""Retrieval scores: teacher forcing (one pass per batch) vs token-by-token greedy generation.

Times both implementations side by side on the same prompts and checks the scores are identical,
then prints the causal check (top-k retrieval heads vs k random non-retrieval heads, uniform
attention) on the zoo's retrieval models that are present.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/retrieval.py [--answer-tokens 24]

Rows: the hand-wired toy model (circuitkit.heads.toy) with needles of ``--answer-tokens`` tokens
(Wu et al.'s needles are sentences of ~20 tokens), and zoo:retrieval-handbuilt with its own
2-token needles. On a CPU the speed-up grows with the answer length (generation runs one full
forward per answer token; teacher forcing one per batch).
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def _time(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(label, model, prompts_or_task, batch_size):
    from circuitkit.heads import needle_prompts, retrieval_scores, retrieval_scores_generate

    prompts = needle_prompts(prompts_or_task)
    fast, t_fast = _time(lambda: retrieval_scores(model, prompts, batch_size=batch_size, progress=False))
    slow, t_slow = _time(lambda: retrieval_scores_generate(model, prompts, progress=False))
    same = torch.equal(fast.meta["per_prompt"], slow.meta["per_prompt"]) and torch.equal(fast.values, slow.values)
    n_answer = sum(len(p.answer) for p in prompts) / len(prompts)
    print(f"{label:34s} prompts={len(prompts):3d} answer_tokens={n_answer:4.1f} ctx<={max(len(p.tokens) for p in prompts):4d}"
          f"  teacher-forced {t_fast:7.2f}s  generation {t_slow:7.2f}s  ratio {t_slow / t_fast:6.1f}x"
          f"  identical={same}  retrieval heads={fast.meta['retrieval_heads']}")
    assert same, "teacher-forced and generation-based scores differ"
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answer-tokens", type=int, default=24, help="needle length for the toy model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from circuitkit import load_model, zoo_task
    from circuitkit.heads import retrieval_causal_check
    from circuitkit.heads.toy import copy_retrieval_model, toy_needle_task, toy_tokenizer
    from circuitkit.zoo import list_zoo

    print("== speed: teacher forcing vs generation (same prompts, scores must be identical) ==")
    rng = random.Random(0)
    chunks = [str(i) for i in range(10, 100)]
    values = [" ".join(rng.sample(chunks, args.answer_tokens)) for _ in range(4)]
    lengths = (64 + args.answer_tokens, 96 + args.answer_tokens)
    toy = copy_retrieval_model(toy_tokenizer(values), n_ctx=max(lengths) + args.answer_tokens)
    task = toy_needle_task(toy, context_lengths=lengths, depths=(0.0, 0.25, 0.5, 0.75, 1.0), values=values)
    compare(f"toy (a1.h0), {args.answer_tokens}-token needles", toy, task, args.batch_size)

    zoo = {card.name for card in list_zoo()}
    if "retrieval-handbuilt" in zoo:
        model = load_model("zoo:retrieval-handbuilt", device="cpu")
        compare("zoo:retrieval-handbuilt", model, zoo_task("retrieval-handbuilt", model), args.batch_size)

    print("\n== causal check: uniform attention on top-k vs k random non-retrieval heads ==")
    for name in ("retrieval-handbuilt", "needle-trained"):
        if name not in zoo:
            print(f"zoo:{name}: not in this checkout")
            continue
        from circuitkit.heads import retrieval_scores
        from circuitkit.heads.causal import needle_accuracy

        model = load_model(f"zoo:{name}", device="cpu")
        task = zoo_task(name, model)
        scores = retrieval_scores(model, task, batch_size=args.batch_size, progress=False)
        heads = list(scores.meta["retrieval_heads"])
        others = model.cfg.n_layers * model.cfg.n_heads - len(heads)
        k = max(1, min(len(heads), others))  # random draws come from the non-retrieval heads
        check = retrieval_causal_check(model, task, scores, k=k, n_random=5, seed=0, progress=False)
        print(f"zoo:{name}: kept {scores.meta['n_kept']}/{len(task)} trials, retrieval heads {heads}, {check}")
        if k < len(heads):
            print(f"  (k capped at the {others} non-retrieval heads; all {len(heads)} retrieval heads ablated: "
                  f"accuracy {needle_accuracy(model, task, ablate=heads)[0]:.3f}, first token "
                  f"{needle_accuracy(model, task, ablate=heads, accuracy='first')[0]:.3f})")
        print(check.to_frame().to_string(index=False))


if __name__ == "__main__":
    main()
