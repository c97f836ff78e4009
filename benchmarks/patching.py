"""Patching benchmarks, measured side by side in one run (CPU, one thread).

    PYTHONPATH=. python benchmarks/patching.py

(a) exact head-output activation patching: circuitkit vs ``transformer_lens.patching`` on the
    same IOI task (16 prompts) and three random-weight models: GPT-2-style 4 layers x 8 heads at
    d_model 128 and at d_model 32 (both with the 232-token word vocabulary), and one shaped like
    Pythia-14m (6 layers x 4 heads, d_model 128, rotary, parallel attention + MLP, 50304-row
    embedding as in the real model), where the unembedding is most of a forward pass.
    Then the same sweeps on the zoo models and tasks (16 prompts) that (b) and (c) use, so all
    three parts are measured on the same models and tasks. ``ceiling``: transformer_lens's time
    over that of circuitkit's two reference runs (clean and corrupted, which its time includes and
    transformer_lens's does not), the speed-up if every patched run were free.
(b), (c) attribution: ``benchmarks/attribution.py``, run from here.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def gpt2_style_model(tokenizer, n_layers: int = 4, n_heads: int = 8, d_model: int = 128, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_model // n_heads, d_mlp=4 * d_model,
        d_vocab=len(tokenizer), n_ctx=64, act_fn="gelu", normalization_type="LN", seed=seed, device="cpu",
        model_name="bench-gpt2-style",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def pythia_14m_shaped(tokenizer, seed: int = 0):
    """Random weights in Pythia-14m's shape (EleutherAI/pythia-14m's config; weights cannot be
    downloaded here). The embedding has 50304 rows, like the real model's padded vocabulary."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=6, n_heads=4, d_model=128, d_head=32, d_mlp=512, d_vocab=50304, n_ctx=2048, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=8, rotary_adjacent_pairs=False,
        parallel_attn_mlp=True, seed=seed, device="cpu", model_name="pythia-14m-shaped (random weights)",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def setup(n_prompts: int = 16, shape: str = "gpt2", **model_kwargs):
    from circuitkit.tasks.builders import default_words, ioi
    from circuitkit.tokenizers import word_level_tokenizer

    tokenizer = word_level_tokenizer(default_words())
    model = pythia_14m_shaped(tokenizer) if shape == "pythia-14m" else gpt2_style_model(tokenizer, **model_kwargs)
    task = ioi(model, n_prompts=n_prompts)
    return model, task


def _best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def part_a(model, task, repeats: int = 2) -> list[dict]:
    """Head-output patching (all positions and by position): circuitkit vs TransformerLens."""
    import transformer_lens.patching as tlp

    from circuitkit.patching import activation_patching
    from circuitkit.patching.engine import prepare_runs

    # circuitkit's time includes its clean and corrupted reference runs (transformer_lens's excludes
    # the clean run filling its cache and the scores its metric normalises by), so no speed-up can
    # pass transformer_lens's time over theirs: the "ceiling".
    t_ref, runs = _best_of(lambda: prepare_runs(model, task, "denoise", [], []), repeats)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(task.clean)
    metric = runs.metric()
    rows = []
    for by_pos, tl_fn in ((False, tlp.get_act_patch_attn_head_out_all_pos),
                          (True, tlp.get_act_patch_attn_head_out_by_pos)):
        # best of `repeats` for both sides: sub-second timings vary by 20% from run to run
        t_tl, ref = _best_of(lambda fn=tl_fn: fn(model, task.corrupted, clean_cache, metric), repeats)
        t_ck, scores = _best_of(
            lambda b=by_pos: activation_patching(model, task, "head_out", by_pos=b, progress=False), repeats)
        diff = float((ref - scores.meta["grid"]).abs().max())
        rows.append({"granularity": "head_out by_pos" if by_pos else "head_out all_pos", "patches": ref.numel(),
                     "transformer_lens_s": t_tl, "circuitkit_s": t_ck, "speedup": t_tl / t_ck, "ceiling": t_tl / t_ref,
                     "max_abs_diff": diff})
    return rows


# --- part b/c: attribution (benchmarks/attribution.py, run from here so one command prints all three) ---


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, task = setup()
    cfg = model.cfg
    print(f"model: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, vocab {cfg.d_vocab}; "
          f"task: {task.name}, {len(task)} prompts x {task.clean.shape[1]} tokens; torch threads 1")
    print("(a) exact head-output activation patching (denoising, normalised logit diff)")
    _print_rows(part_a(model, task))
    # The same sweep where a forward pass is cheap, so per-pass overhead dominates (like a GPU).
    small, small_task = setup(n_layers=4, n_heads=8, d_model=32)
    print("    same task, overhead-bound model: 4 layers x 8 heads, d_model 32")
    _print_rows(part_a(small, small_task))
    pythia, pythia_task = setup(shape="pythia-14m")
    print("    same task, Pythia-14m-shaped model: 6 layers x 4 heads, d_model 128, vocab 50304 (random weights)")
    _print_rows(part_a(pythia, pythia_task))
    attribution = _attribution_module()
    for name, zoo_model, zoo_task, _ in attribution._models(16, quiet=True):
        c = zoo_model.cfg
        print(f"    zoo model {name} on its task ({len(zoo_task)} prompts x {zoo_task.clean.shape[1]} tokens): "
              f"{c.n_layers} layers x {c.n_heads} heads, d_model {c.d_model}, vocab {c.d_vocab}")
        _print_rows(part_a(zoo_model, zoo_task))
    attribution.main([])


def _attribution_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("attribution_bench", Path(__file__).with_name("attribution.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        print(f"  {row['granularity']:17s} {row['patches']:4d} patches  transformer_lens {row['transformer_lens_s']:7.2f} s"
              f"  circuitkit {row['circuitkit_s']:6.2f} s  speedup {row['speedup']:5.1f}x (ceiling {row['ceiling']:6.1f}x)"
              f"  max |diff| {row['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
